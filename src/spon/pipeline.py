"""Whole-model steps from text, shared by the commands and experiments: open, calibrate, train, evaluate, export,
generate."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from spon.io.artifact import check_artifact_path, is_artifact, load_artifact, save_artifact
from spon.io.atomic import atomic_dir, check_new_output, ensure_writable_dir
from spon.io.modeling_spon import wrap_folder
from spon.evaluation.intervals import paired_bootstrap
from spon.sparsity.calibrate import calibrate_
from spon.config import SparsityConfig, TrainConfig
from spon.io.data import TextSplits, sequences, tokenize
from spon.errors import SponError
from spon.evaluation.evaluate import EvalProtocol, evaluate_variants, window_scores
from spon.io.data import bos_token_id
from spon.training.fold import fold_
from spon.serving.greedy import greedy_generate
from spon.serving.sampling import Sampling
from spon.io.models import LoadedModel, gguf_source, load_model
from spon.evaluation.nudge import rounding_floor
from spon.sparsity.sparsify import dense, sparse_modules, sparsify_
from spon.training.train import train_spon_

__all__ = ["open_model", "check_weights_choice", "serve_model", "calibrate_model", "train_model", "evaluate_model", "float_perplexity", "export_model", "check_chat_template", "generate_text"]


def open_model(
    spec: str, dtype: str = "float32", artifact: str | None = None, device_map: str | None = None, *, check_weights: bool = True,
    trust_remote_code: bool = False, weights: str = "float",
) -> tuple[LoadedModel, dict | None]:
    """Load a model, and an artifact onto it: the one given, or the one inside an exported folder.

    check_weights: refuse an artifact saved from other weights (see `load_artifact`).
    weights: a GGUF block type ("q8_0", ...) replaces every decoder linear's and the head's weights by their values in
    that type, before the artifact is loaded (its thresholds and vectors were made on them); "gguf" checks that the
    model comes from a GGUF file (whose values it already has); "float" leaves the weights as loaded."""
    check_weights_choice(spec, weights, dtype)
    if artifact is not None:
        check_artifact_path(artifact)  # before a load that can take minutes
    lm = load_model(spec, dtype, device_map=device_map, trust_remote_code=trust_remote_code)
    if weights not in ("float", "gguf"):
        from spon.serving.quantized_model import quantize_weights_

        quantize_weights_(lm.model, weights)
    lm.identity["weights"] = weights
    meta = None
    if artifact is not None:
        meta = load_artifact(lm.model, artifact, check_weights=check_weights)
    elif lm.folder is not None and is_artifact(lm.folder):
        meta = load_artifact(lm.model, lm.folder, check_weights=check_weights)
    return lm, meta


def check_weights_choice(spec: str, weights: str, dtype: str = "float32") -> None:
    """One line, before any load, where `weights` cannot apply to this model."""
    if weights == "gguf" and gguf_source(spec) is None:
        raise SponError(f"--weights gguf keeps a GGUF file's own quantized types, but {spec!r} is not a GGUF file: load "
                        "a .gguf file or an embedded model, or quantize to a type (--weights q8_0, q4_0, q4_1, q5_0)")
    if weights != "float" and dtype != "float32":
        raise SponError(f"--weights {weights} computes in float32 from quantized weights: drop --dtype {dtype}")


def serve_model(lm: LoadedModel, spec: str, weights: str) -> dict:
    """Fold SPON and swap every sparse layer and the head for quantized ones (`quantized_model.serve_quantized_`):
    from the GGUF file's own tensors ("gguf") or quantized to a type."""
    from spon.serving.quantized_model import serve_quantized_

    fold_(lm.model)
    return serve_quantized_(lm.model, weights, gguf_source(spec) if weights == "gguf" else None)


def calibrate_model(
    lm: LoadedModel, splits: TextSplits, config: SparsityConfig, *, calib_tokens: int = 8192, seq_len: int = 256,
    batch_size: int = 4, seed: int = 0, progress: bool = True, inputs: str = "dense",
) -> dict:
    """Sparsify and calibrate thresholds on the calibration split; returns the calibration description.

    inputs="own": the model is already sparsified (and trained); set its thresholds again on the inputs it feeds
    its own layers, so the model as it will run meets the target (`calibrate_`)."""
    ids = tokenize(lm.tokenizer, splits.calibration)
    bos = bos_token_id(lm.tokenizer)
    seqs = sequences(ids, seq_len, calib_tokens, bos=bos)
    if len(seqs) == 0:
        raise SponError(f"calibration text has {ids.numel()} tokens, fewer than one {seq_len}-token sequence; give more text")
    if inputs == "dense":
        sparsify_(lm.model, config)
    t0 = time.time()
    if inputs == "own":
        calibrate_(lm.model, list(seqs.split(batch_size)), config, seed=seed, progress=progress, inputs="own")
    elif config.allocation == "greedy":
        from spon.sparsity.allocate import greedy_allocate_

        greedy_allocate_(lm.model, list(seqs.split(batch_size)), config, seed=seed, progress=progress)
    else:
        calibrate_(lm.model, list(seqs.split(batch_size)), config, seed=seed, progress=progress)
    return {
        "data": splits.source,
        "split": "calibration",
        "tokens": int(seqs.numel()),
        "seq_len": seq_len,
        "bos": bos is not None,
        "seed": seed,
        "inputs": inputs,
        "seconds": round(time.time() - t0, 1),
    }


def train_model(
    lm: LoadedModel, splits: TextSplits, config: TrainConfig, *, progress: bool = True, checkpoint: str | Path | None = None,
    checkpoint_every: int = 10, resume: bool = False,
) -> dict:
    """Train SPON vectors on the calibration split, keeping the best step by validation score (config.select) on the validation split."""
    t0 = time.time()
    result = train_spon_(
        lm.model, tokenize(lm.tokenizer, splits.calibration), tokenize(lm.tokenizer, splits.validation), config,
        bos=bos_token_id(lm.tokenizer), progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume,
    )
    return {"config": config.to_dict(), "result": result.to_dict(), "data": splits.source, "seconds": round(time.time() - t0, 1)}


def evaluate_model(lm: LoadedModel, text: str, source: dict, protocol: EvalProtocol, *, progress: bool = True,
                   nudges: int = 0) -> dict:
    """Perplexity of dense, sparse and sparse+SPON on `text` (each with its 95% interval); a model that is not sparsified
    gets its dense perplexity alone. source: what the text is (recorded as "data"). nudges: also score the sparse model
    that many times with every threshold nudged by a rounding-sized amount (`nudge.rounding_floor`, "rounding_floor")."""
    ids = tokenize(lm.tokenizer, text)
    bos = bos_token_id(lm.tokenizer)
    if not sparse_modules(lm.model):
        w = window_scores(lm.model, ids, protocol, bos, progress=progress, desc="dense")
        out = {"protocol": protocol.to_dict(), "bos": bos is not None, "ppl_dense": w.ppl, "tokens": w.tokens,
               "windows": int(w.counts.numel()), "ci95": paired_bootstrap({"dense": w.nll}, w.counts),
               "per_window": {"tokens": w.counts.tolist(), "nll": {"dense": w.nll.tolist()}}}
    else:
        with dense(lm.model):
            d = window_scores(lm.model, ids, protocol, bos, progress=progress, desc="dense")
        out = evaluate_variants(lm.model, ids, protocol, bos, progress=progress, dense_scores=d)
        if nudges:
            out["rounding_floor"] = rounding_floor(
                lambda: evaluate_variants(lm.model, ids, protocol, bos, progress=False, dense_scores=d), lm.model, out,
                nudges, progress=progress)
    out["data"] = source
    return out


def float_perplexity(spec: str, text: str, protocol: EvalProtocol, *, trust_remote_code: bool = False,
                     progress: bool = True):
    """The float model's dense perplexity on `text`, as a function that adds it to a quantized model's evaluation:
    "ppl_float" with its interval and "quantization_cost" (the dense quantized perplexity over the float one, with the
    interval of the ratio, paired over the same windows)."""
    lm = load_model(spec, "float32", trust_remote_code=trust_remote_code)
    ids = tokenize(lm.tokenizer, text)
    w = window_scores(lm.model, ids, protocol, bos_token_id(lm.tokenizer), progress=progress, desc="float dense")
    del lm

    def add(res: dict) -> dict:
        dense_nll = torch.tensor(res["per_window"]["nll"]["dense"], dtype=torch.float64)
        counts = torch.tensor(res["per_window"]["tokens"])
        ci = paired_bootstrap({"float": w.nll, "dense": dense_nll}, counts)
        return {"ppl_float": w.ppl, "quantization_cost": res["ppl_dense"] / w.ppl - 1.0,
                "ci95": {**res.get("ci95", {}), "ppl_float": ci["ppl_float"]}}

    return add


def export_model(spec: str, artifact: str, out: str, dtype: str = "float32", *, check_weights: bool = True,
                 trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """Write a model folder (base weights + tokenizer + folded SPON artifact) that `load_model` runs sparse, and so does
    transformers' `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` (`io.modeling_spon`).

    `out` must be new, empty, or (with overwrite) an earlier export: a folder holding anything else is refused."""
    out_path = Path(out)
    check_new_output(out_path, is_artifact, "exported model folder", overwrite)
    check_artifact_path(artifact)
    ensure_writable_dir(out_path.parent)
    lm = load_model(spec, dtype, trust_remote_code=trust_remote_code)
    with atomic_dir(out_path) as tmp:
        lm.model.save_pretrained(tmp)  # the dense base weights, before any module is swapped
        lm.tokenizer.save_pretrained(tmp)
        meta = load_artifact(lm.model, artifact, check_weights=check_weights)
        fold_(lm.model)
        keep = {k: v for k, v in meta.items() if k in ("calibration", "training", "metrics")}
        save_artifact(lm.model, tmp, {**lm.identity, "name": f"{spec} (exported)"}, exported_from=str(artifact), **keep)
        wrap_folder(tmp)  # AutoModelForCausalLM loads it sparse (trust_remote_code), and never silently dense
    return out_path


def check_chat_template(tokenizer) -> None:
    """One line where --chat cannot apply: the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise SponError("--chat: this model's tokenizer has no chat template; drop --chat to continue the prompt as plain text")


@torch.no_grad()
def generate_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 40, *, sampling: Sampling | None = None,
                  chat: bool = False) -> str:
    """The continuation of `prompt` (the new text only), one forward per token (`greedy.greedy_generate`): greedy, or
    drawn as `sampling` says. chat: the prompt as a user message through the tokenizer's chat template."""
    if chat:
        check_chat_template(tokenizer)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    pick = sampling.picker() if sampling is not None else None
    return tokenizer.decode(greedy_generate(model, ids, max_new_tokens, pick=pick), skip_special_tokens=True)
