"""What one kernel call per group of projections sharing an input buys (kernels/grouping.py), measured side by side.

Usage: python scripts/ab_grouping.py --model smollm2 --artifact ART [--dtype float32] [--rounds 6] [--out ab.json]

One process, two copies of the sparse+SPON model, both compiled with a static KV cache (`spon.serving.decode.compile_decode_`),
one with the grouping pass and one without; 64 greedy tokens per round, the two alternated round by round after a
warm-up round that compiles (timed apart). Prints tokens/s per round, the medians and the median of the per-round
ratios (grouped / one call per layer) with their range, and checks that both give the same tokens.
"""
import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from spon.io.atomic import write_text
from spon.bench.decode import greedy_decode
from spon.serving.decode import compile_decode_, prepare_decode_
from spon.pipeline import open_model
from spon.serving.machine import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="In Python, a list comprehension")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    lm, _ = open_model(a.model, a.dtype, a.artifact)
    prepare_decode_(lm.model)
    models = {"grouped": lm.model, "per_layer": copy.deepcopy(lm.model)}
    for name, m in models.items():
        compile_decode_(m, group_projections=name == "grouped")
    prompt = lm.tokenizer(a.prompt, return_tensors="pt")["input_ids"]
    compile_s, rates, tokens = {}, {k: [] for k in models}, {}
    for r in range(a.rounds + 1):
        for name, m in (models.items() if r % 2 == 0 else reversed(models.items())):
            t0 = time.perf_counter()
            toks, _, dt = greedy_decode(m, prompt, a.new_tokens)
            if r == 0:
                compile_s[name] = round(time.perf_counter() - t0, 1)
                tokens[name] = toks
            else:
                rates[name].append((a.new_tokens - 1) / dt)
        if r:
            print(f"round {r}: grouped {rates['grouped'][-1]:.1f} tok/s, per layer {rates['per_layer'][-1]:.1f} tok/s",
                  flush=True)
    ratios = [g / p for g, p in zip(rates["grouped"], rates["per_layer"])]
    res = {"model": a.model, "artifact": a.artifact, "dtype": a.dtype, "new_tokens": a.new_tokens, "rounds": a.rounds,
           "compile_seconds": compile_s, "tokens_per_s": rates,
           "median_tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
           "ratio_per_round": ratios, "median_ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
           "same_tokens": tokens["grouped"] == tokens["per_layer"], "threads": torch.get_num_threads(), "machine": machine()}
    print(json.dumps({k: res[k] for k in ("compile_seconds", "median_tokens_per_s", "median_ratio", "ratio_range",
                                          "same_tokens")}, indent=1))
    if a.out:
        write_text(Path(a.out), json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
