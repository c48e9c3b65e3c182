"""spon: activation sparsity for Hugging Face causal LMs, with spontaneous neurons (SPON) to win back accuracy.

The pipeline, one stage per subpackage: `sparsity` (swap linears, calibrate thresholds), `io` (models, text,
artifacts), `evaluation` (perplexity with intervals), `training` (SPON vectors, fold), `serving` (fast decoding).
The names below are the public API; the command line (`spon --help`) is built on them.

    import spon

    lm = spon.load_model("smollm2")                  # a hub id, a folder, a .gguf file, or an embedded name
    splits = spon.load_splits("pydoc")
    cal = spon.tokenize(lm.tokenizer, splits.calibration)
    val = spon.tokenize(lm.tokenizer, splits.validation)
    bos = spon.bos_token_id(lm.tokenizer)
    config = spon.SparsityConfig(sparsity=0.5)
    spon.sparsify_(lm.model, config)
    spon.calibrate_(lm.model, list(spon.sequences(cal, 256, 8192, bos=bos).split(4)), config)
    spon.train_spon_(lm.model, cal, val, spon.TrainConfig(), bos=bos)
    spon.fold_(lm.model)
"""

from spon.io.artifact import load_artifact, read_artifact, save_artifact
from spon.sparsity.calibrate import calibrate_
from spon.config import SparsityConfig, TrainConfig
from spon.io.data import TextSplits, bos_token_id, load_splits, sequences, tokenize
from spon.serving.decode import compile_decode_, masked_dense, prepare_decode_, warm_guards
from spon.errors import SponError
from spon.evaluation.evaluate import EvalProtocol, evaluate_variants, gap_recovered, perplexity
from spon.training.fold import fold_
from spon.serving.greedy import greedy_generate, greedy_token
from spon.io.models import LoadedModel, load_model
from spon.sparsity.sparse_linear import SparseLinear
from spon.sparsity.sparsify import dense, dense_block_weights, measure_sparsity, sparse_modules, sparsify_, target_linears, unsparsify_, without_spon
from spon.training.train import TrainResult, train_spon_

__version__ = "0.1.0"

__all__ = [
    "SparsityConfig", "TrainConfig", "EvalProtocol", "SparseLinear", "SponError", "LoadedModel", "TextSplits",
    "TrainResult", "load_model", "load_splits", "tokenize", "sequences", "bos_token_id", "sparsify_", "unsparsify_", "calibrate_", "train_spon_",
    "fold_", "dense", "dense_block_weights", "without_spon", "measure_sparsity", "sparse_modules", "target_linears", "save_artifact", "load_artifact",
    "read_artifact", "perplexity", "evaluate_variants", "gap_recovered", "prepare_decode_", "compile_decode_", "warm_guards", "masked_dense",
    "greedy_generate",
    "greedy_token",
]
