"""Held-out perplexity of the training-free start (--init mean-dropped, no gradient steps): SmolLM2 at 50%, seed 0.

Usage: python scripts/init_alone.py ARTIFACT   (a 50% seed-0 SmolLM2 artifact: its thresholds are reused)
"""
import json
import sys

from spon import load_model, load_artifact, load_splits, tokenize, sparse_modules, EvalProtocol, evaluate_variants
from spon.io.data import bos_token_id
from spon.training.alphas import init_alphas_
from spon.training.train import TrainConfig, init_sequences, training_sequences
lm = load_model("smollm2", "float32")
load_artifact(lm.model, sys.argv[1])  # the seed-0 artifact: its thresholds are what calibration gives at seed 0
for m in sparse_modules(lm.model).values():
    m.alpha.data.zero_()
splits = load_splits("pydoc")
bos = bos_token_id(lm.tokenizer)
config = TrainConfig(seed=0)  # train_spon_'s draw and init batches for the defaults
init_alphas_(lm.model, init_sequences(training_sequences(tokenize(lm.tokenizer, splits.calibration), config, bos=bos), config),
             progress=False)
r = evaluate_variants(lm.model, tokenize(lm.tokenizer, splits.evaluation), EvalProtocol(), bos, progress=False)
r.pop("per_window", None)
print(json.dumps(r))
