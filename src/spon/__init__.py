"""spon: activation sparsity for Hugging Face causal LMs, with spontaneous neurons (SPON) to win back accuracy.

    import spon
    lm = spon.load_model("smollm2")
    spon.sparsify_(lm.model, spon.SparsityConfig(sparsity=0.5))
    spon.calibrate_(lm.model, calibration_batches, config)
    spon.train_spon_(lm.model, train_ids, val_ids, spon.TrainConfig())
    spon.fold_(lm.model)
"""

from .artifact import load_artifact, read_artifact, save_artifact
from .calibrate import calibrate_
from .config import SparsityConfig, TrainConfig
from .data import TextSplits, load_splits, tokenize
from .decode import compile_decode_, masked_dense, prepare_decode_, warm_guards
from .errors import SponError
from .evaluate import EvalProtocol, evaluate_variants, gap_recovered, perplexity
from .fold import fold_
from .greedy import greedy_generate, greedy_token
from .models import LoadedModel, load_model
from .sparse_linear import SparseLinear
from .sparsify import dense, dense_block_weights, measure_sparsity, sparse_modules, sparsify_, target_linears, unsparsify_, without_spon
from .train import TrainResult, train_spon_

__version__ = "0.1.0"

__all__ = [
    "SparsityConfig", "TrainConfig", "EvalProtocol", "SparseLinear", "SponError", "LoadedModel", "TextSplits",
    "TrainResult", "load_model", "load_splits", "tokenize", "sparsify_", "unsparsify_", "calibrate_", "train_spon_",
    "fold_", "dense", "dense_block_weights", "without_spon", "measure_sparsity", "sparse_modules", "target_linears", "save_artifact", "load_artifact",
    "read_artifact", "perplexity", "evaluate_variants", "gap_recovered", "prepare_decode_", "compile_decode_", "warm_guards", "masked_dense",
    "greedy_generate",
    "greedy_token",
]
