"""One process, one layout: sparse+SPON compiled with threshold/folded_bias as frozen Parameters (params) or buffers."""
import statistics, sys, time, torch
from spon.bench.decode import generate_decode
from spon.decode import compile_decode_, prepare_decode_, warm_guards
from spon.jobs import open_model
from spon.sparsify import sparse_modules
model, dtype, art, rounds, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(2)
lm, _ = open_model(model, dtype, art)
prepare_decode_(lm.model)
m = lm.model
if mode == "buffers":
    for s in sparse_modules(m).values():
        for name in ("threshold", "folded_bias"):
            t = s._parameters.pop(name)
            s.register_buffer(name, None if t is None else t.data)
compile_decode_(m)
prompt = lm.tokenizer("In Python, a list comprehension", return_tensors="pt")["input_ids"]
N = 64
t0 = time.perf_counter(); toks, _, _ = generate_decode(m, prompt, N); c = time.perf_counter() - t0
rates = []
with warm_guards():
    for r in range(rounds):
        t, _, dt = generate_decode(m, prompt, N); rates.append((N - 1) / dt)
print(mode, dtype, "compile %.0f s" % c, "median tok/s %.2f" % statistics.median(rates), [round(x, 1) for x in rates], flush=True)
