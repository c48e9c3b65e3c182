"""The single-step commands (`calibrate`, `train`, `eval`, `export`, `generate`): a config each and one function
that runs it and returns the text the command prints."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from spon import distributed as dd
from spon.io.artifact import is_artifact, save_artifact
from spon.io.atomic import check_new_output, ensure_writable_dir, write_text
from spon.config import SparsityConfig, TrainConfig, opt
from spon.io.data import PARTS, load_eval_text, load_splits
from spon.errors import SponError
from spon.evaluation.evaluate import PRESETS, EvalProtocol
from spon.serving.machine import machine
from spon.serving.sampling import Sampling
from spon.evaluation.nudge import describe_floor
from spon.sparsity.sparsify import dense, sparsify_, unsparsify_
from spon.pipeline import (calibrate_model, check_chat_template, check_weights_choice, evaluate_model, export_model, float_perplexity, generate_text,
                           open_model, serve_model, train_model)
from spon.io.models import ModelArgs
from spon.experiments.tables import with_ci

__all__ = [
    "CalibrateJob", "TrainJob", "EvalJob", "ExportJob", "GenerateJob", "calibrate", "train", "evaluate", "export", "generate",
]


@dataclass
class CalibrateJob(ModelArgs):
    """Calibrate thresholds and write an artifact."""

    out: str = opt(None, "artifact folder to write", type="str", required=True)
    data: str = opt("pydoc", "text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder")
    sparsity: SparsityConfig = opt(factory=SparsityConfig)
    calib_tokens: int = opt(8192, "calibration tokens for thresholds")


@dataclass
class TrainJob(CalibrateJob):
    """Train SPON vectors (calibrating first unless an artifact is given)."""

    train: TrainConfig = opt(factory=TrainConfig)
    artifact: str | None = opt(None, "start from this calibrated artifact", type="str")
    checkpoint_every: int = opt(10, "write OUT/checkpoint.pt every N steps")
    resume: bool = opt(False, "continue from OUT/checkpoint.pt after a crash or kill")
    match_sparsity: bool = opt(False, "after training, set the thresholds again on the inputs the sparse+SPON model feeds "
                                      "its own layers, so it runs at the target sparsity (default: thresholds from dense "
                                      "inputs, TEAL's protocol and the paper's, where SPON runs a little less sparse)")


def calibrate(cfg: CalibrateJob | TrainJob, progress: bool = True) -> str:
    """Calibrate (and with a TrainJob, train), then write the artifact; under torchrun process 0 writes it."""
    training = isinstance(cfg, TrainJob)
    ckpt = Path(cfg.out) / "checkpoint.pt" if training else None
    if training and cfg.resume:
        dd.require_everywhere(ckpt.is_file(), f"nothing to resume: no checkpoint at {ckpt}; run without --resume",
                              f"the checkpoint {ckpt} is visible to process 0 only; --resume under torchrun needs OUT on a "
                              "filesystem every process shares")
    check_new_output(cfg.out, lambda p: is_artifact(p) or (p / "checkpoint.pt").is_file(), "artifact", overwrite=True)
    ensure_writable_dir(cfg.out)
    splits = load_splits(cfg.data)
    lm, meta = open_model(cfg.model, cfg.dtype, cfg.artifact if training else None, cfg.device_map,
                          check_weights=not cfg.ignore_weights, trust_remote_code=cfg.trust_remote_code, weights=cfg.weights)
    info = {"calibration": meta["calibration"]} if meta and "calibration" in meta else {}
    if not meta:
        info["calibration"] = calibrate_model(lm, splits, cfg.sparsity, calib_tokens=cfg.calib_tokens, progress=progress)
    if training:
        info["training"] = train_model(lm, splits, cfg.train, progress=progress, checkpoint=ckpt,
                                       checkpoint_every=cfg.checkpoint_every, resume=cfg.resume)
        info["training"]["processes"] = dd.world_size()
        if cfg.match_sparsity:
            info["calibration"] = calibrate_model(lm, splits, lm.model.spon_config, calib_tokens=cfg.calib_tokens,
                                                  progress=progress, inputs="own")
    if dd.is_main():
        save_artifact(lm.model, cfg.out, lm.identity, **info)
        if ckpt is not None and ckpt.is_file():
            ckpt.unlink()  # the artifact is whole: the checkpoint has done its job
    dd.barrier()
    return f"spon: wrote {cfg.out}" if dd.is_main() else ""


def train(cfg: TrainJob, progress: bool = True) -> str:
    return calibrate(cfg, progress)


@dataclass
class EvalJob(ModelArgs):
    """Perplexity (or lm-eval tasks) of dense, sparse and sparse+SPON; the dense model alone without an artifact."""

    artifact: str | None = opt(None, "artifact folder (not needed for an exported model folder; without one: dense only)",
                               type="str")
    data: str | None = opt(None, "text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder (default pydoc)",
                           type="str")
    split: str | None = opt(None, "the part scored: whole, or calibration/validation/evaluation of the 80/10/10 block split "
                                  "(default: a local file whole; pydoc, stdlib, wikitext2, c4 their held-out evaluation part)",
                            type="str", choices=PARTS)
    protocol: EvalProtocol = opt(factory=EvalProtocol)
    preset: str | None = opt(None, "a standard perplexity protocol (context, stride and data; --data PATH keeps the "
                                   "protocol on local text)", type="str", choices=tuple(sorted(PRESETS)))
    tasks: str | None = opt(None, "lm-evaluation-harness tasks instead of perplexity, e.g. arc_easy,hellaswag", type="str")
    include_path: str | None = opt(None, "folder of local lm-eval task configs (works offline)", type="str")
    limit: int | None = opt(None, "lm-eval: items per task", type="int")
    nudges: int = opt(0, "also score the sparse model N more times with every threshold nudged by 1e-6 of its value "
                         "(the size two CPUs' calibrations differ by) and report the spread: the rounding floor",
                      type="int")
    json: bool = opt(False, "print one JSON object")
    out: str | None = opt(None, "also write eval.json into this folder (for `spon report`)", type="str")


def _ci(res: dict, key: str, spec: str) -> str:
    return with_ci(res[key], res.get("ci95", {}).get(key), spec)


def describe_metrics(res: dict) -> str:
    """One line: each perplexity and the gap recovered with its 95% interval, and what was scored."""
    parts = [f"dense {_ci(res, 'ppl_dense', '.3f')}"]
    if "ppl_float" in res:  # a quantized model: its float original first, and what the quantization costs
        parts = [f"float dense {_ci(res, 'ppl_float', '.3f')}",
                 f"{res['weights']} dense {_ci(res, 'ppl_dense', '.3f')} ({res['quantization_cost']:+.2%})"]
    if "ppl_sparse" in res:
        parts.append(f"sparse {_ci(res, 'ppl_sparse', '.3f')}")
    if res.get("ppl_spon") is not None:
        parts += [f"sparse+SPON {_ci(res, 'ppl_spon', '.3f')}", f"gap recovered {_ci(res, 'gap_recovered', '.1%')}"]
    what = [f"{res['tokens']} tokens of {res['data']['description']} ({res['data']['split']})", f"{res['windows']} windows"]
    if "sparsity_measured" in res:
        sparsity = f"sparsity {res['sparsity_measured']:.1%}"
        if res.get("sparsity_measured_spon") is not None:
            sparsity += f" ({res['sparsity_measured_spon']:.1%} with SPON)"
        what = [sparsity, *what, res["tokens_sparsified"]]
    line = "  ".join(parts) + f"  ({', '.join(what)}; 95% intervals: paired bootstrap over windows)"
    if res.get("rounding_floor"):
        line += "\n" + describe_floor(res["rounding_floor"])
    return line


def evaluate(cfg: EvalJob, progress: bool = True) -> str:
    preset = PRESETS.get(cfg.preset) if cfg.preset else None
    data = cfg.data or (preset["data"] if preset else "pydoc")
    protocol = cfg.protocol
    if preset:
        protocol = EvalProtocol(ctx_len=preset["ctx_len"], stride=preset["stride"], max_tokens=protocol.max_tokens,
                                batch_size=protocol.batch_size)
    out = ensure_writable_dir(cfg.out) if cfg.out else None
    tasks = [t.strip() for t in cfg.tasks.split(",") if t.strip()] if cfg.tasks else None
    if cfg.nudges < 0:
        raise SponError(f"--nudges {cfg.nudges}: give a count of 0 or more (e.g. --nudges 4)")
    if cfg.nudges and tasks is not None:
        raise SponError("--nudges measures perplexity's rounding floor: drop --tasks, or drop --nudges")
    if tasks is not None:
        from spon.experiments.harness import harness

        harness()  # a missing lm-eval fails before the model loads
    text, source = (None, None) if tasks is not None else load_eval_text(data, cfg.split)
    check_weights_choice(cfg.model, cfg.weights, cfg.dtype)
    float_cost = None
    if cfg.weights not in ("float", "gguf") and tasks is None:  # the quantization's own cost: the float model first
        float_cost = float_perplexity(cfg.model, text, protocol, trust_remote_code=cfg.trust_remote_code, progress=progress)
    lm, meta = open_model(cfg.model, cfg.dtype, cfg.artifact, cfg.device_map, check_weights=not cfg.ignore_weights,
                          trust_remote_code=cfg.trust_remote_code, weights=cfg.weights)
    if tasks is not None:
        if meta is None:
            raise SponError("nothing to compare on tasks: pass --artifact (from `spon calibrate`/`spon train`) or an exported "
                            "model folder")
        from spon.experiments.harness import evaluate_tasks, render_tasks

        res = {"tasks": evaluate_tasks(lm.model, lm.tokenizer, tasks, include_path=cfg.include_path, limit=cfg.limit,
                                       batch_size=protocol.batch_size)}
        res.update(model=lm.identity, tokens_sparsified=lm.model.spon_config.describe_tokens(), machine=machine())
        shown = render_tasks(res)
    else:
        if cfg.nudges and meta is None:
            raise SponError("--nudges moves the sparse model's thresholds: pass --artifact (from `spon calibrate`/`spon train`) "
                            "or an exported model folder")
        res = evaluate_model(lm, text, source, protocol, progress=progress, nudges=cfg.nudges)
        res.update(model=lm.identity, preset=cfg.preset, machine=machine(), weights=cfg.weights)
        if float_cost is not None:
            res.update(float_cost(res))
        shown = describe_metrics(res)
    if out:
        write_text(out / "eval.json", json.dumps(res, indent=2, default=str))
    return json.dumps(res, default=str) if cfg.json else shown


@dataclass
class ExportJob(ModelArgs):
    """Write a folded model folder that `spon` loads and runs sparse."""

    artifact: str = opt(None, "the artifact to fold in", type="str", required=True)
    out: str = opt(None, "model folder to write (new or empty)", type="str", required=True)
    overwrite: bool = opt(False, "replace an earlier spon export in --out (a folder holding anything else is refused)")


def export(cfg: ExportJob, progress: bool = True) -> str:
    path = export_model(cfg.model, cfg.artifact, cfg.out, cfg.dtype, check_weights=not cfg.ignore_weights,
                        trust_remote_code=cfg.trust_remote_code, overwrite=cfg.overwrite)
    return f"spon: wrote {path}; run it with `spon generate --model {path} --prompt ...`"


@dataclass
class GenerateJob(ModelArgs):
    """Generation with the sparse (+SPON) model, or the dense one: greedy, or sampled with --temperature."""

    prompt: str = opt(None, "the prompt", type="str", required=True)
    artifact: str | None = opt(None, "artifact folder (not needed for an exported model folder)", type="str")
    max_new_tokens: int = opt(40, "tokens to generate")
    dense: bool = opt(False, "generate with the dense model")
    compile: bool = opt(False, "decode through torch.compile with a static KV cache (sparse: the prepared kernel as one "
                               "custom operator); the first call compiles")
    sampling: Sampling = opt(factory=Sampling)
    chat: bool = opt(False, "send the prompt as a user message through the tokenizer's chat template (instruct models)")


def generate(cfg: GenerateJob, progress: bool = True) -> str:
    lm, meta = open_model(cfg.model, cfg.dtype, cfg.artifact, cfg.device_map, check_weights=not cfg.ignore_weights,
                          trust_remote_code=cfg.trust_remote_code, weights=cfg.weights)
    if meta is None and not cfg.dense:
        raise SponError("no sparsity to apply: pass --artifact, an exported model folder, or --dense")
    if cfg.chat:
        check_chat_template(lm.tokenizer)  # before serving or compiling
    if cfg.weights != "float":  # served from quantized bytes; dense: every linear at 0% sparsity through the same kernel
        if cfg.dense:
            unsparsify_(lm.model)
            sparsify_(lm.model, SparsityConfig(sparsity=0.0))
        serve_model(lm, cfg.model, cfg.weights)
    if cfg.compile:
        from spon.serving.decode import compile_decode_, prepare_decode_

        if meta is not None:
            prepare_decode_(lm.model)
        compile_decode_(lm.model)
    with dense(lm.model) if cfg.dense and cfg.weights == "float" else contextlib.nullcontext():
        return generate_text(lm.model, lm.tokenizer, cfg.prompt, cfg.max_new_tokens, sampling=cfg.sampling, chat=cfg.chat)
