"""one process: sparse+SPON compiled (and optionally HF dense compiled) tok/s; argv: model dtype artifact attn dense(0/1)"""
import sys, time, statistics, torch, spon
from spon.jobs import open_model
from spon.decode import prepare_decode_, compile_decode_, warm_guards
from spon.bench.decode import generate_decode
model, dtype, art, attn, do_dense = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
torch.set_num_threads(2)
def load(a):
    lm, _ = open_model(model, dtype, a)
    if attn != "default":
        lm.model.set_attn_implementation(attn)
    return lm
lm = load(art)
m = lm.model
prepare_decode_(m, head="kernel")
compile_decode_(m)
prompt = lm.tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
models = [("sparse+SPON", m)]
if do_dense:
    d = load(None).model
    compile_decode_(d)
    models.append(("HF dense", d))
for _, mm in models:
    generate_decode(mm, prompt, 64)
res = {n: [] for n, _ in models}
with warm_guards():
    for r in range(5):
        for n, mm in models:
            _, _, dt = generate_decode(mm, prompt, 64); res[n].append(63 / dt)
print(spon.__file__, attn, m.config._attn_implementation, " ".join(f"{n} {statistics.median(v):.2f} ({min(v):.1f}-{max(v):.1f})" for n, v in res.items()), flush=True)
