"""Held-out perplexity of the training-free start (--init mean-dropped, no gradient steps): SmolLM2 at 50%, seed 0.

Usage: python scripts/init_alone.py ARTIFACT   (a 50% seed-0 SmolLM2 artifact: its thresholds are reused)
"""
import json
import sys

import torch

from spon import load_model, load_artifact, load_splits, tokenize, sparse_modules, EvalProtocol, evaluate_variants
from spon.evaluate import bos_token_id
from spon.init import init_alphas_
from spon.train import sequences
lm = load_model("smollm2", "float32")
load_artifact(lm.model, sys.argv[1])  # the seed-0 artifact: its thresholds are what calibration gives at seed 0
for m in sparse_modules(lm.model).values():
    m.alpha.data.zero_()
splits = load_splits("pydoc")
bos = bos_token_id(lm.tokenizer)
seqs = sequences(tokenize(lm.tokenizer, splits.calibration), 256, bos=bos)
seqs = seqs[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(0))[:64]]  # train_spon_'s draw, seed 0
init_alphas_(lm.model, seqs[: 8192 // 256].split(4), progress=False)
r = evaluate_variants(lm.model, tokenize(lm.tokenizer, splits.evaluation), EvalProtocol(), bos, progress=False)
r.pop("per_window", None)
print(json.dumps(r))
