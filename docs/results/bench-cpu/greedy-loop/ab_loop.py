"""A/B in one process: Hugging Face's generate() against spon.greedy_generate over the same compiled model.

Usage: python ab_loop.py MODEL DTYPE ARTIFACT ROUNDS (e.g. smollm2 bfloat16 ART 10). Both loops decode 64 greedy tokens
(no early stop), alternated round by round after one warm-up each (which compiles), timed inside warm_guards.
"""
import copy, statistics, sys, time
import torch
from spon.jobs import open_model
from spon.decode import prepare_decode_, compile_decode_, warm_guards
from spon.bench.decode import greedy_decode

model_name, dtype, art, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lm, meta = open_model(model_name, dtype, art)
m = lm.model
prepare_decode_(m)
compile_decode_(m)
prompt = lm.tokenizer("In Python, a list comprehension", return_tensors="pt")["input_ids"]
N = 64


class _Clock:  # a generate() streamer that only timestamps
    def __init__(self):
        self.times, self.tokens = [], []

    def put(self, value):
        self.times.append(time.perf_counter())
        if len(self.times) > 1:
            self.tokens.append(int(value.reshape(-1)[-1]))

    def end(self):
        pass


@torch.no_grad()
def generate_decode(model, prompt, n):
    clock, gc = _Clock(), model.generation_config
    eos, gc.eos_token_id = gc.eos_token_id, None
    try:
        model.generate(prompt, max_new_tokens=n, do_sample=False, streamer=clock, pad_token_id=0)
    finally:
        gc.eos_token_id = eos
    return clock.tokens, 0.0, clock.times[-1] - clock.times[1]

def lean(model, prompt, n):  # the library's loop, as `spon bench decode` times it
    return greedy_decode(model, prompt, n)


fns = {"generate": generate_decode, "lean": lean}
ref = {}
for k, f in fns.items():  # warm-up: compile
    t0 = time.perf_counter(); toks, _, _ = f(m, prompt, N); ref[k] = toks
    print(k, "warm-up", round(time.perf_counter() - t0, 1), "s", flush=True)
print("same tokens:", ref["generate"] == ref["lean"], flush=True)
secs = {k: [] for k in fns}
for r in range(rounds):
    order = list(fns) if r % 2 == 0 else list(fns)[::-1]
    for k in order:
        with warm_guards():
            toks, _, dt = fns[k](m, prompt, N)
        assert toks == ref[k], k
        secs[k].append(dt)
ratios = [g / l for g, l in zip(secs["generate"], secs["lean"])]
for k, v in secs.items():
    print(k, "tok/s median", round((N - 1) / statistics.median(v), 1), "rounds", [round((N - 1) / x, 1) for x in v])
print("lean speed / generate speed: median", round(statistics.median(ratios), 3), "range", round(min(ratios), 3), round(max(ratios), 3))
