"""Sparse+SPON eager (uncompiled) tok/s of two layouts in one process, alternated round by round (A: each layer its
own matrix, per-layer calls; C: the layers in one huge-page arena, siblings side by side, the first sibling's call
computing the group). argv: model dtype artifact rounds, e.g. `qwen2.5-0.5b bfloat16 ART 10`."""
import statistics
import sys

import torch

from spon import huge_pages as hp
from spon.bench.decode import greedy_decode
from spon.decode import prepare_decode_
from spon.jobs import open_model

model, dtype, art, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(2)
ms = {}
for v in "AC":
    hp.MIN_ARENA = 1 << 62 if v == "A" else hp.HUGE_PAGE
    lm, _ = open_model(model, dtype, art)
    prepare_decode_(lm.model, head="kernel", fuse_siblings=v == "C")
    prompt = lm.tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
    greedy_decode(lm.model, prompt, 64)
    ms[v] = lm.model
res = {v: [] for v in ms}
for r in range(rounds):
    for v, m in (ms.items() if r % 2 == 0 else reversed(ms.items())):
        _, _, dt = greedy_decode(m, prompt, 64)
        res[v].append(63 / dt)
for v in ms:
    print(f"RESULT {model} {dtype} eager {v} median {statistics.median(res[v]):.2f} all {' '.join(f'{x:.1f}' for x in res[v])}")
ratios = sorted(c / a for c, a in zip(res["C"], res["A"]))
print(f"RATIO eager C/A median {statistics.median(ratios):.3f} range {ratios[0]:.3f}-{ratios[-1]:.3f}")
