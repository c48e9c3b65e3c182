"""The greedy loop's token pick, A/B in one process: torch's argmax (A) against `greedy_token` (B), the same compiled
sparse+SPON model, alternated round by round. argv: model dtype artifact rounds, e.g. `qwen2.5-0.5b bfloat16 ART 10`."""
import statistics, sys, time

import torch

from spon import greedy
from spon.decode import compile_decode_, prepare_decode_, warm_guards
from spon.jobs import open_model

model, dtype, art, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(2)
lm, _ = open_model(model, dtype, art)
m = lm.model
prepare_decode_(m)
compile_decode_(m)
prompt = lm.tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
fast = greedy.greedy_token
picks = {"A argmax": lambda logits: int(logits.reshape(-1).argmax()), "B greedy_token": fast}
tokens = {}
for name, pick in picks.items():  # warm-up (compiles once) and the tokens each pick gives
    greedy.greedy_token = pick
    tokens[name] = greedy.greedy_generate(m, prompt, 64, eos_token_id=None)
assert tokens["A argmax"] == tokens["B greedy_token"], "the two picks gave different tokens"
res = {k: [] for k in picks}
with warm_guards():
    for r in range(rounds):
        for name in (picks if r % 2 == 0 else reversed(list(picks))):
            greedy.greedy_token = picks[name]
            t0 = time.perf_counter()
            greedy.greedy_generate(m, prompt, 64, eos_token_id=None)
            res[name].append(64 / (time.perf_counter() - t0))
for k, v in res.items():
    print(f"{model} {dtype} {k}: median {statistics.median(v):.2f} tok/s, all {' '.join(f'{x:.1f}' for x in v)}")
ratios = sorted(b / a for a, b in zip(res["A argmax"], res["B greedy_token"]))
print(f"B/A median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}, same 64 tokens: True")
