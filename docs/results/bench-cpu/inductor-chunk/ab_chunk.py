"""One process, four compiled copies alternated round by round: ours (sparse+SPON) and HF dense, each with inductor's default
parallel threshold (cpp.min_chunk_size 512) and with every generated kernel serial (1 << 30). argv: model dtype artifact rounds."""
import sys, statistics, torch, spon
import torch._dynamo, torch._inductor.config as ic
from spon.jobs import open_model
from spon.decode import prepare_decode_, compile_decode_, warm_guards
from spon.bench.decode import generate_decode
model, dtype, art, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(2)
torch._dynamo.config.cache_size_limit = 64
ms = {}
for v, chunk in (("default", 512), ("serial", 1 << 30)):
    for kind in ("ours", "hf"):
        ic.cpp.min_chunk_size = chunk
        lm, _ = open_model(model, dtype, art if kind == "ours" else None)
        m = lm.model
        if kind == "ours":
            prepare_decode_(m, head="kernel")
        compile_decode_(m)
        prompt = lm.tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
        generate_decode(m, prompt, 64)  # compiles under this setting
        ms[f"{kind}-{v}"] = m
res = {v: [] for v in ms}
with warm_guards():
    for r in range(rounds):
        for v, m in (ms.items() if r % 2 == 0 else reversed(ms.items())):
            _, _, dt = generate_decode(m, prompt, 64); res[v].append(63 / dt)
for v in ms:
    print(f"RESULT {model} {dtype} {v} median {statistics.median(res[v]):.2f} all {' '.join(f'{x:.1f}' for x in res[v])}", flush=True)
for kind in ("ours", "hf"):
    ratios = sorted(x / y for x, y in zip(res[f"{kind}-serial"], res[f"{kind}-default"]))
    print(f"RATIO {kind} serial/default median {statistics.median(ratios):.3f} range {ratios[0]:.3f}-{ratios[-1]:.3f}")
