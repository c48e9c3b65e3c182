"""Where a compiled single-token step's time goes: torch.profiler over 64 greedy tokens of a prepared, compiled model
(after a warm-up that compiles), CPU self time per operator, per step. A dense model (no artifact) runs HF's own
compiled step for comparison.

argv: model dtype ARTIFACT|dense [top], e.g. `smollm2 float32 runs/art` or `smollm2 float32 dense`."""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from spon.bench.decode import greedy_decode
from spon.serving.decode import compile_decode_, prepare_decode_, warm_guards
from spon.pipeline import open_model
from spon.io.models import load_model

model, dtype, art = sys.argv[1], sys.argv[2], sys.argv[3]
top = int(sys.argv[4]) if len(sys.argv) > 4 else 12
torch.set_num_threads(2)
if art == "dense":
    lm = load_model(model, dtype)
else:
    lm, _ = open_model(model, dtype, art)
    prepare_decode_(lm.model)
m = lm.model
compile_decode_(m)
prompt = lm.tokenizer("In Python, a list comprehension", return_tensors="pt")["input_ids"]
greedy_decode(m, prompt, 64)  # compiles
with warm_guards():
    _, _, dt = greedy_decode(m, prompt, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, _, dt_prof = greedy_decode(m, prompt, 64)
print(f"{model} {dtype} {art}: {dt / 63 * 1e3:.2f} ms a step unprofiled, {dt_prof / 63 * 1e3:.2f} ms profiled")
events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
total = sum(e.self_cpu_time_total for e in events)
print(f"{'operator':60s} {'calls/step':>10s} {'ms/step':>8s} {'share':>6s}")
for e in events[:top]:
    print(f"{e.key[:60]:60s} {e.count / 64:10.1f} {e.self_cpu_time_total / 64 / 1e3:8.3f} {e.self_cpu_time_total / total:6.1%}")
