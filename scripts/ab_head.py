"""The output head dense or sparsified, A/B in one process: compiled sparse+SPON decoding of two artifacts of one
model (A: the head dense, B: `--sparsify-head`), next to HF compiled dense and llama.cpp dense on the same weights
(where installed), every variant alternated round by round (the order reversed every other round), 64 greedy tokens
each, 2 threads; compile time apart. Prints medians, the paired per-round ratios, the byte bounds, and writes JSON.

argv: model dtype ARTIFACT_A ARTIFACT_B rounds out.json, e.g. `smollm2 float32 default/art head30/art 8 ab.json`."""
import contextlib, json, statistics, sys, time

import torch

from spon.io.atomic import atomic_file
from spon.bench.decode import byte_bound, greedy_decode, round_ratios
from spon.bench.llama_cpp import open_llama_cpp
from spon.serving.decode import compile_decode_, prepare_decode_, warm_guards
from spon.pipeline import open_model
from spon.serving.machine import machine
from spon.io.models import load_model
from spon.sparsity.sparsify import measure_sparsity

model, dtype, art_a, art_b, rounds, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(2)
dense = load_model(model, dtype)
prompt = dense.tokenizer("In Python, a list comprehension", return_tensors="pt")["input_ids"]
variants, bounds, skipped = {"HF compiled dense": dense.model}, {}, {}
for name, art in (("A head dense", art_a), ("B head sparse", art_b)):
    lm, _ = open_model(model, dtype, art)
    m = lm.model
    with measure_sparsity(m) as sp:  # untimed, eager: the columns the decode skips with these vectors
        greedy_decode(m, prompt, 64)
    skipped[name] = sp["weighted"]
    prepare_decode_(m)
    bounds[name] = byte_bound(m, sp["weighted"])
    variants[name] = m
for m in variants.values():
    compile_decode_(m)
llama = open_llama_cpp(model, dtype)
runners = {k: (lambda m: lambda: greedy_decode(m, prompt, 64))(m) for k, m in variants.items()}
if not isinstance(llama, str):
    runners["llama.cpp dense"] = lambda: llama.decode(prompt, 64)
compile_s, tokens = {}, {}
for name, fn in runners.items():  # warm-up round: compiles
    t0 = time.perf_counter()
    tokens[name] = fn()[0]
    compile_s[name] = round(time.perf_counter() - t0, 1)
seconds = {k: [] for k in runners}
same = {k: True for k in runners}
for r in range(rounds):
    for name in (list(runners) if r % 2 == 0 else reversed(list(runners))):
        guards = warm_guards() if name != "llama.cpp dense" else contextlib.nullcontext()
        with guards:
            toks, _, dt = runners[name]()
        same[name] &= toks == tokens[name]
        seconds[name].append(dt)
rates = {k: [63 / dt for dt in v] for k, v in seconds.items()}
med = {k: statistics.median(v) for k, v in rates.items()}
for k, v in rates.items():
    print(f"{model} {dtype} {k}: median {med[k]:.2f} tok/s, all {' '.join(f'{x:.1f}' for x in v)}, compile {compile_s[k]} s")


def paired(a, b):  # b's speed over a's, round by round
    return round_ratios(seconds, a)[b]


pairs = {"B/A": paired("A head dense", "B head sparse"),
         "A/HF compiled": paired("HF compiled dense", "A head dense"), "B/HF compiled": paired("HF compiled dense", "B head sparse")}
if "llama.cpp dense" in rates:
    pairs.update({"A/llama.cpp": paired("llama.cpp dense", "A head dense"), "B/llama.cpp": paired("llama.cpp dense", "B head sparse")})
for k, v in pairs.items():
    print(f"{k}: median {v['median']:.3f}, range {v['min']:.3f}-{v['max']:.3f}")
print(f"byte bounds: {bounds}; skipped: {skipped}; same tokens every round: {same}")
res = {"model": model, "dtype": dtype, "artifacts": {"A head dense": art_a, "B head sparse": art_b}, "rounds": rounds,
       "new_tokens": 64, "tokens_per_s": rates, "median": med, "paired_ratios": pairs, "byte_bound": bounds,
       "skipped": skipped, "compile_seconds": compile_s, "same_tokens_every_round": same,
       "llama_cpp": llama if isinstance(llama, str) else "measured", "machine": machine()}
with atomic_file(out) as tmp:
    tmp.write_text(json.dumps(res, indent=1))
if not isinstance(llama, str):
    llama.close()
