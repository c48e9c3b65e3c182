"""Sparse+SPON compiled tok/s of three layouts in one process, alternated round by round (A: each layer its own matrix,
per-layer calls, the head alone on huge pages; B: the layers in one huge-page arena; C: B with siblings (q/k/v, gate/up)
side by side and one grouped call each). argv: model dtype artifact variants rounds, e.g. `qwen2.5-0.5b bfloat16 ART ABC 10`."""
import sys, statistics, torch, spon
import torch._dynamo
from spon import huge_pages as hp
from spon.jobs import open_model
from spon.decode import prepare_decode_, compile_decode_, warm_guards, layers_on_huge_pages
from spon.bench.decode import generate_decode
model, dtype, art, variants, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_num_threads(2)
torch._dynamo.config.cache_size_limit = 64
ms = {}
for v in variants:
    hp.MIN_ARENA = 1 << 62 if v == "A" else hp.HUGE_PAGE
    lm, _ = open_model(model, dtype, art)
    m = lm.model
    prepare_decode_(m, head="kernel", fuse_siblings=v in "CD")
    compile_decode_(m, group_projections=v == "C")
    prompt = lm.tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
    generate_decode(m, prompt, 64)
    ms[v] = m
res = {v: [] for v in ms}
with warm_guards():
    for r in range(rounds):
        for v, m in (ms.items() if r % 2 == 0 else reversed(ms.items())):
            _, _, dt = generate_decode(m, prompt, 64); res[v].append(63 / dt)
for v in ms:
    print(f"RESULT {model} {dtype} {v} arena={layers_on_huge_pages(ms[v])} median {statistics.median(res[v]):.2f} all {' '.join(f'{x:.1f}' for x in res[v])}", flush=True)
a = res[variants[0]]
for v in variants[1:]:
    ratios = sorted(x / y for x, y in zip(res[v], a))
    print(f"RATIO {v}/{variants[0]} median {statistics.median(ratios):.3f} range {ratios[0]:.3f}-{ratios[-1]:.3f}")
