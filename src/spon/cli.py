"""`spon` command line: each subcommand parses into a config and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import pipeline
from .artifact import save_artifact
from .atomic import ensure_writable_dir
from .config import SPON_ON, SparsityConfig, TrainConfig, check_sparsity
from .data import load_splits
from .errors import SponError
from .evaluate import PRESETS, EvalProtocol
from .models import DEFAULT_MODEL, EMBEDDED_MODELS

__all__ = ["main", "build_parser"]


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    try:
        return check_sparsity(value)
    except SponError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sparsities(text: str) -> tuple[float, ...]:
    values = tuple(_sparsity(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one sparsity, e.g. 0.25,0.5,0.7")
    return values


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder, .gguf file, hub id, or {', '.join(EMBEDDED_MODELS)} (default {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device-map", default=None, help="split a large model across devices with accelerate, e.g. auto")
    if data:
        p.add_argument("--data", default="pydoc", help="text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _sparsity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparsity", type=_sparsity, default=0.5, help="target fraction of inputs zeroed per layer (default 0.5)")
    p.add_argument("--tokens", default="all", choices=["all", "decode", "last"], help="which tokens are sparsified (default all)")
    p.add_argument("--last-fraction", type=float, default=0.5, help="with --tokens last: fraction of each sequence (default 0.5)")
    p.add_argument("--override", action="append", default=[], metavar="REGEX=S",
                   help="per-layer sparsity for modules whose name matches REGEX, e.g. 'mlp\\.down_proj=0.3' (repeatable)")
    p.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens for thresholds (default 8192)")
    p.add_argument("--rule", default="magnitude", choices=["magnitude", "wina", "cats", "rsparse"],
                   help="selection rule: magnitude (TEAL), wina, cats (MLP activations), rsparse (low-rank for dropped inputs)")
    p.add_argument("--selection", default="threshold", choices=["threshold", "topk"], help="calibrated threshold or exact per-token top-k")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "greedy"], help="uniform, or TEAL's greedy per-block allocation")
    p.add_argument("--rsparse-budget", type=float, default=0.1, help="R-Sparse low-rank size as a fraction of each weight (default 0.1)")


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--train-sequences", type=int, default=d.train_sequences, help=f"distinct training sequences, reused over epochs (default {d.train_sequences})")
    p.add_argument("--teacher-topk", type=int, default=d.teacher_topk, help=f"teacher log-probs kept per token (default {d.teacher_topk}; 0 = exact KL)")
    p.add_argument("--init", default=d.init, choices=["zeros", "mean-dropped"], help=f"starting vectors (default {d.init})")
    p.add_argument("--spon-on", default=d.spon_on, choices=list(SPON_ON), help="layers that get a vector (default all; others stay plain sparse)")
    p.add_argument("--neurons", type=int, default=d.neurons, help="ablation: k output-space spontaneous neurons per layer instead of alpha (default 0 = alpha)")
    p.add_argument("--seed", type=int, default=d.seed)


def _eval_args(p: argparse.ArgumentParser) -> None:
    d = EvalProtocol()
    p.add_argument("--ctx-len", type=int, default=d.ctx_len, help=f"evaluation window (default {d.ctx_len})")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: the context length)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate on the first N tokens only")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line naming the problem, then exit 2."""

    def error(self, message):
        self.exit(2, f"spon: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spon", description="Activation sparsity + spontaneous neurons for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="the main job: calibrate 50%% sparsity, train SPON, evaluate, generate, write a report")
    _common(p); _sparsity_args(p); _train_args(p); _eval_args(p)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")

    p = sub.add_parser("sweep", help="calibrate, train SPON and evaluate at several sparsities; table + PNG plots")
    _common(p); _sparsity_args(p); _train_args(p); _eval_args(p)
    p.add_argument("--sparsities", type=_sparsities, default=(0.25, 0.4, 0.5, 0.6, 0.7), help="comma-separated (default 0.25,0.4,0.5,0.6,0.7)")
    p.add_argument("--eval-data", default=None, help="evaluate on this corpus's held-out split instead (cross-domain), e.g. stdlib")
    p.add_argument("--out", default="sweep_out", help="output folder (default sweep_out)")

    p = sub.add_parser("compare", help="each peer's rule with and without SPON at the same sparsity: table + plot")
    _common(p); _sparsity_args(p); _train_args(p); _eval_args(p)
    p.add_argument("--methods", default="teal,teal-greedy,wina,cats,rsparse,topk", help="comma-separated (default all)")
    p.add_argument("--no-spon", action="store_true", help="plain sparsity only (no SPON training)")
    p.add_argument("--out", default="compare_out")

    p = sub.add_parser("bench", help="benchmarks, measured side by side in one run (JSON)")
    bench = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    b = bench.add_parser("step", help="one SPON training step vs one plain forward+backward of the sparse model")
    _common(b); _sparsity_args(b); _train_args(b)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--out", default=None, help="folder for step.json")
    b = bench.add_parser("gemv", help="sparse GEMV kernel vs dense F.linear, itself at 0%% and plain torch; GB/s")
    b.add_argument("--shapes", default="4096x14336,14336x4096", help="OUTxIN,... (default 4096x14336,14336x4096)")
    b.add_argument("--sparsities", type=_sparsities, default=(0.0, 0.25, 0.5, 0.7, 0.9))
    b.add_argument("--dtypes", default="float32,bfloat16")
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--out", default=None, help="folder for gemv.json and gemv.png")
    b = bench.add_parser("decode", help="batch-1 greedy decoding: dense vs sparse vs sparse+folded SPON, tokens/s")
    _common(b); _sparsity_args(b)
    b.add_argument("--artifact", help="thresholds + SPON vectors to serve (default: calibrate --sparsity, no SPON)")
    b.add_argument("--dtypes", default="float32,bfloat16")
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--prompt", default="In Python, a list comprehension")
    b.add_argument("--out", default=None, help="folder for decode.json and decode.png")

    p = sub.add_parser("calibrate", help="calibrate thresholds and write an artifact")
    _common(p); _sparsity_args(p)
    p.add_argument("--out", required=True, help="artifact folder to write")

    p = sub.add_parser("train", help="train SPON vectors (calibrating first unless --artifact is given)")
    _common(p); _sparsity_args(p); _train_args(p)
    p.add_argument("--artifact", help="start from this calibrated artifact")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--checkpoint-every", type=int, default=10, help="write OUT/checkpoint.pt every N steps (default 10)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt after a crash or kill")

    p = sub.add_parser("eval", help="perplexity (and lm-eval tasks) of dense, sparse and sparse+SPON")
    _common(p); _eval_args(p)
    p.set_defaults(data=None)
    p.add_argument("--artifact", help="artifact folder (not needed for an exported model folder)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a standard perplexity protocol (context, stride and data; --data PATH keeps the protocol on local text)")
    p.add_argument("--tasks", default=None, help="lm-evaluation-harness tasks instead of perplexity, e.g. arc_easy,hellaswag (needs lm-eval)")
    p.add_argument("--include-path", default=None, help="folder of local lm-eval task configs (works offline)")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: items per task")
    p.add_argument("--batch-size", type=int, default=4, help="lm-eval batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, help="also write eval.json into this folder (for `spon report`)")

    p = sub.add_parser("diagnose", help="per-layer drift from dense (sparse vs sparse+SPON) and always-active channels; JSON + PNG")
    _common(p)
    p.add_argument("--artifact", help="artifact folder (not needed for an exported model folder)")
    p.add_argument("--sequences", type=int, default=2, help="held-out sequences to diagnose (default 2)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--sparsities", type=_sparsities, default=(0.25, 0.5, 0.7), help="for the always-active curves")
    p.add_argument("--out", default="diagnose_out", help="folder for diagnose.json and the plots")

    p = sub.add_parser("report", help="one Markdown page with plots from folders written by demo/eval/sweep/diagnose/bench")
    p.add_argument("inputs", nargs="+", help="result folders")
    p.add_argument("--out", default="report_out", help="folder for report.md and the plots (default report_out)")
    p.add_argument("--title", default="spon report")

    p = sub.add_parser("export", help="write a folded model folder that `spon` loads and runs sparse")
    _common(p, data=False)
    p.add_argument("--artifact", required=True)
    p.add_argument("--out", required=True, help="model folder to write")

    p = sub.add_parser("generate", help="greedy generation with the sparse (+SPON) model, or --dense")
    _common(p, data=False)
    p.add_argument("--artifact", help="artifact folder (not needed for an exported model folder)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--dense", action="store_true", help="generate with the dense model")
    return parser


def _sparsity_config(a) -> SparsityConfig:
    overrides = {}
    for item in a.override:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern:
            raise SponError(f"--override {item!r} must look like REGEX=SPARSITY, e.g. 'mlp\\.down_proj=0.3'")
        try:
            overrides[pattern] = float(value)
        except ValueError:
            raise SponError(f"--override {item!r}: {value!r} is not a number") from None
    return SparsityConfig(sparsity=a.sparsity, tokens=a.tokens, last_fraction=a.last_fraction, overrides=overrides, rule=a.rule,
                          selection=a.selection, allocation=a.allocation, rsparse_budget=a.rsparse_budget)


def _train_config(a) -> TrainConfig:
    return TrainConfig(
        lr=a.lr, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, seed=a.seed,
        train_sequences=a.train_sequences, teacher_topk=a.teacher_topk, init=a.init, spon_on=a.spon_on, neurons=a.neurons,
    )


def _protocol(a) -> EvalProtocol:
    return EvalProtocol(ctx_len=a.ctx_len, stride=a.stride or a.ctx_len, max_tokens=a.max_tokens)


def _write_json(folder: str | None, name: str, obj: dict) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if folder:
        from .atomic import write_text

        write_text(ensure_writable_dir(folder) / name, text)
    print(text)


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise SponError(f"--shapes {text!r} must look like OUTxIN[,OUTxIN...], e.g. 4096x14336")
    return shapes  # type: ignore[return-value]


def _dtypes(text: str, allowed: tuple[str, ...]) -> list[str]:
    values = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in values if d not in allowed]
    if not values or bad:
        raise SponError(f"--dtypes {text!r}: use a comma-separated list of {', '.join(allowed)}")
    return values


def _bench(a, progress: bool) -> int:
    if a.bench == "step":
        from .bench_step import bench_step
        from .data import sequences, tokenize
        from .evaluate import bos_token_id

        sparsity, train = _sparsity_config(a), _train_config(a)
        if a.out:
            ensure_writable_dir(a.out)
        splits = load_splits(a.data)
        lm, _ = pipeline.open_model(a.model, a.dtype, None, a.device_map)
        pipeline.calibrate_model(lm, splits, sparsity, calib_tokens=a.calib_tokens, progress=progress)
        seqs = sequences(tokenize(lm.tokenizer, splits.calibration), train.seq_len, bos=bos_token_id(lm.tokenizer))
        if len(seqs) < train.batch_size:
            raise SponError(f"need {train.batch_size} sequences of {train.seq_len} tokens for one batch; give more text")
        res = bench_step(lm.model, seqs[: train.batch_size], train, repeats=a.repeats)
        _write_json(a.out, "step.json", {"benchmark": "step", "model": lm.identity, "sparsity": sparsity.sparsity, **res, "machine": pipeline.machine()})
        return 0
    if a.bench == "gemv":
        from .bench_gemv import bench_gemv
        from .plots import plot_gemv

        shapes, dtypes = _shapes(a.shapes), _dtypes(a.dtypes, ("float32", "bfloat16"))
        out = ensure_writable_dir(a.out) if a.out else None
        res = {"benchmark": "gemv", **bench_gemv(shapes, list(a.sparsities), dtypes, repeats=a.repeats, progress=progress),
               "machine": pipeline.machine()}
        if out:
            plot_gemv(res, out)
        _write_json(a.out, "gemv.json", res)
        return 0
    if a.bench == "decode":
        from .bench_decode import bench_decode
        from .plots import plot_decode

        sparsity, dtypes = _sparsity_config(a), _dtypes(a.dtypes, ("float32", "bfloat16", "float16"))
        out = ensure_writable_dir(a.out) if a.out else None
        splits = load_splits(a.data) if not a.artifact else None
        runs = {}
        for dtype in dtypes:
            dense_lm = pipeline.load_model(a.model, dtype)
            sparse_lm, meta = pipeline.open_model(a.model, dtype, a.artifact)
            if meta is None:
                pipeline.calibrate_model(sparse_lm, splits, sparsity, calib_tokens=a.calib_tokens, progress=progress)
            prompt = dense_lm.tokenizer(a.prompt, return_tensors="pt")["input_ids"]
            runs[dtype] = bench_decode(dense_lm.model, sparse_lm.model, prompt, new_tokens=a.new_tokens, repeats=a.repeats, progress=progress)
            del dense_lm, sparse_lm
        target = meta["sparsity"]["sparsity"] if meta else sparsity.sparsity
        res = {"benchmark": "decode", "model": {"name": a.model}, "artifact": a.artifact, "sparsity": target,
               "runs": runs, "machine": pipeline.machine()}
        if out:
            plot_decode(res, out)
        _write_json(a.out, "decode.json", res)
        return 0
    raise SponError(f"unknown benchmark {a.bench!r}")


def _eval(a, progress: bool) -> int:
    preset = PRESETS.get(a.preset) if a.preset else None
    data = a.data or (preset["data"] if preset else "pydoc")
    if preset:
        a.ctx_len, a.stride = preset["ctx_len"], a.stride or preset["stride"]
    out = ensure_writable_dir(a.out) if a.out else None
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    if tasks is not None:
        from .harness import _harness

        _harness()  # a missing lm-eval fails before the model loads
    lm, meta = pipeline.open_model(a.model, a.dtype, a.artifact, a.device_map)
    if meta is None:
        raise SponError("nothing to evaluate: pass --artifact (from `spon calibrate`/`spon train`) or an exported model folder")
    if tasks is not None:
        from .harness import evaluate_tasks

        res = {"tasks": evaluate_tasks(lm.model, lm.tokenizer, tasks, include_path=a.include_path, limit=a.limit, batch_size=a.batch_size)}
        res.update(model=lm.identity, tokens_sparsified=lm.model.spon_config.describe_tokens(), machine=pipeline.machine())
        lines = ["| task | metric | " + " | ".join(res["tasks"]) + " |", "|---|---|" + "---|" * len(res["tasks"])]
        first = next(iter(res["tasks"].values()))["results"]
        for task, metrics in first.items():
            for metric in metrics:
                if "stderr" in metric:
                    continue
                vals = [f"{v['results'][task][metric]:.4f}" for v in res["tasks"].values()]
                lines.append(f"| {task} | {metric} | " + " | ".join(vals) + " |")
        text = "\n".join(lines)
    else:
        res = pipeline.evaluate_model(lm, load_splits(data), _protocol(a), progress=progress)
        res.update(model=lm.identity, preset=a.preset, machine=pipeline.machine())
        text = f"dense {res['ppl_dense']:.3f}  sparse {res['ppl_sparse']:.3f}" + (
            f"  sparse+SPON {res['ppl_spon']:.3f}  gap recovered {res['gap_recovered']:.1%}" if "ppl_spon" in res else ""
        ) + f"  (sparsity {res['sparsity_measured']:.1%}, {res['tokens']} tokens, {res['tokens_sparsified']})"
    if out:
        from .atomic import write_text

        write_text(out / "eval.json", json.dumps(res, indent=2, default=str))
    print(json.dumps(res, default=str) if a.json else text)
    return 0


def run(a) -> int:
    progress = not getattr(a, "quiet", False)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if a.command == "demo":
        cfg = pipeline.DemoConfig(
            model=a.model, out=a.out, data=a.data, dtype=a.dtype, sparsity=_sparsity_config(a), train=_train_config(a),
            protocol=_protocol(a), calib_tokens=a.calib_tokens,
        )
        pipeline.run_demo(cfg, progress=progress)
        print((Path(a.out) / "report.md").read_text())
        return 0
    if a.command == "sweep":
        from .sweep import SweepConfig, run_sweep

        cfg = SweepConfig(
            model=a.model, out=a.out, data=a.data, eval_data=a.eval_data, dtype=a.dtype, sparsities=a.sparsities,
            sparsity=_sparsity_config(a), train=_train_config(a), protocol=_protocol(a), calib_tokens=a.calib_tokens,
        )
        run_sweep(cfg, progress=progress)
        print((Path(a.out) / "sweep.md").read_text())
        return 0
    if a.command == "bench":
        return _bench(a, progress)
    if a.command == "compare":
        from .compare import METHODS, CompareConfig, run_compare

        methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise SponError(f"unknown method(s) {', '.join(bad) or '(none)'}; use some of {', '.join(METHODS)}")
        cfg = CompareConfig(model=a.model, out=a.out, data=a.data, dtype=a.dtype, methods=methods, sparsity=_sparsity_config(a),
                            train=_train_config(a), spon=not a.no_spon, protocol=_protocol(a), calib_tokens=a.calib_tokens)
        run_compare(cfg, progress=progress)
        print((Path(a.out) / "compare.md").read_text())
        return 0
    if a.command in ("calibrate", "train"):
        from . import distributed as dd

        sparsity = _sparsity_config(a)  # bad options fail before any loading
        train = _train_config(a) if a.command == "train" else None
        ckpt = Path(a.out) / "checkpoint.pt" if train is not None else None
        if train is not None and a.resume and not ckpt.is_file():
            raise SponError(f"nothing to resume: no checkpoint at {ckpt}; run without --resume")
        ensure_writable_dir(a.out)
        splits = load_splits(a.data)
        lm, meta = pipeline.open_model(a.model, a.dtype, getattr(a, "artifact", None), a.device_map)
        info = {"calibration": meta["calibration"]} if meta and "calibration" in meta else {}
        if not meta:
            info["calibration"] = pipeline.calibrate_model(lm, splits, sparsity, calib_tokens=a.calib_tokens, progress=progress)
        if train is not None:
            info["training"] = pipeline.train_model(
                lm, splits, train, progress=progress, checkpoint=ckpt, checkpoint_every=a.checkpoint_every, resume=a.resume,
            )
            info["training"]["processes"] = dd.world_size()
        if dd.is_main():
            save_artifact(lm.model, a.out, lm.identity, **info)
            if ckpt is not None and ckpt.is_file():
                ckpt.unlink()  # the artifact is whole: the checkpoint has done its job
            print(f"spon: wrote {a.out}")
        dd.barrier()
        return 0
    if a.command == "eval":
        return _eval(a, progress)
    if a.command == "report":
        from .report import build_report

        print(f"spon: wrote {build_report(a.inputs, a.out, a.title)}")
        return 0
    if a.command == "diagnose":
        from .atomic import write_text
        from .data import sequences, tokenize
        from .diagnose import diagnose
        from .evaluate import bos_token_id
        from .plots import plot_diagnose

        out = ensure_writable_dir(a.out)
        splits = load_splits(a.data)
        lm, meta = pipeline.open_model(a.model, a.dtype, a.artifact, a.device_map)
        if meta is None:
            raise SponError("nothing to diagnose: pass --artifact (from `spon calibrate`/`spon train`) or an exported model folder")
        ids = sequences(tokenize(lm.tokenizer, splits.evaluation), a.seq_len, bos=bos_token_id(lm.tokenizer))[: a.sequences]
        if len(ids) == 0:
            raise SponError(f"the evaluation text is shorter than one {a.seq_len}-token sequence; give more text or a smaller --seq-len")
        res = {"model": lm.identity, "data": {**splits.source, "split": "evaluation"},
               "sparsity": lm.model.spon_config.sparsity, "tokens_sparsified": lm.model.spon_config.describe_tokens(),
               **diagnose(lm.model, ids, list(a.sparsities)), "machine": pipeline.machine()}
        res["plots"] = plot_diagnose(res, out)
        write_text(out / "diagnose.json", json.dumps(res, indent=2, default=str))
        print(json.dumps({"mean_rel_l2": res["mean_rel_l2"], "kl_final": res["kl_final"]}))
        return 0
    if a.command == "export":
        path = pipeline.export_model(a.model, a.artifact, a.out, a.dtype)
        print(f"spon: wrote {path}; run it with `spon generate --model {path} --prompt ...`")
        return 0
    if a.command == "generate":
        from .sparsify import dense

        lm, meta = pipeline.open_model(a.model, a.dtype, a.artifact, a.device_map)
        if meta is None and not a.dense:
            raise SponError("no sparsity to apply: pass --artifact, an exported model folder, or --dense")
        if a.dense:
            with dense(lm.model):
                print(pipeline.generate_text(lm.model, lm.tokenizer, a.prompt, a.max_new_tokens))
        else:
            print(pipeline.generate_text(lm.model, lm.tokenizer, a.prompt, a.max_new_tokens))
        return 0
    raise SponError(f"unknown command {a.command!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .distributed import init_from_env

        init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on GPUs)
        return run(args)
    except SponError as e:
        print(f"spon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
