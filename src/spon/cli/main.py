"""`spon` command line. Each subcommand is one row of `COMMANDS`: a config dataclass, whose fields (nested configs
flattened) become the flags with their defaults, choices and help, and one function that runs it and returns the
text to print. Nothing else lives here: no orchestration, no rendering."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import sys
import warnings

from spon.config import check_sparsity
from spon.errors import SponError
from spon.io.atomic import remove_created_dirs

__all__ = ["main", "build_parser", "COMMANDS"]

# command -> (module, config class, function, help); "bench X" is `spon bench X`
COMMANDS = {
    "demo": ("experiments.demo", "DemoConfig", "demo", "the main job: calibrate 50%% sparsity, train SPON, evaluate, generate, write a report"),
    "sweep": ("experiments.sweep", "SweepConfig", "sweep", "calibrate, train SPON and evaluate at several sparsities; table + PNG plots"),
    "compare": ("experiments.compare", "CompareConfig", "compare", "each peer's rule with and without SPON at the same sparsity: table + plot"),
    "calibrate": ("cli.commands", "CalibrateJob", "calibrate", "calibrate thresholds and write an artifact"),
    "train": ("cli.commands", "TrainJob", "train", "train SPON vectors (calibrating first unless --artifact is given)"),
    "eval": ("cli.commands", "EvalJob", "evaluate", "perplexity (or lm-eval tasks) of dense, sparse and sparse+SPON"),
    "diagnose": ("experiments.diagnose", "DiagnoseConfig", "run_diagnose", "per-layer drift from dense and always-active channels; JSON + PNG"),
    "report": ("experiments.report", "ReportConfig", "report", "one Markdown page with plots from folders written by the other commands"),
    "export": ("cli.commands", "ExportJob", "export", "write a folded model folder that `spon` loads and runs sparse"),
    "generate": ("cli.commands", "GenerateJob", "generate", "generate with the sparse (+SPON) model, or --dense: greedy, or sampled (--temperature)"),
    "bench step": ("bench.step", "StepBench", "run_step_bench", "one SPON training step vs one plain forward+backward"),
    "bench gemv": ("bench.gemv", "GemvBench", "run_gemv_bench", "sparse GEMV kernel vs dense F.linear, itself at 0%% and plain torch; GB/s"),
    "bench decode": ("bench.decode", "DecodeBench", "run_decode_bench", "batch-1 greedy decoding: dense vs sparse vs sparse+folded SPON"),
}


def _sparsities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(check_sparsity(float(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsities must be numbers in [0, 1), got {text!r}") from None
    except SponError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one sparsity, e.g. 0.25,0.5,0.7")
    return values


def _sparsity(text: str) -> float:
    try:
        return check_sparsity(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    except SponError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise SponError(f"--override {item!r} must look like REGEX=SPARSITY, e.g. 'mlp\\.down_proj=0.3'")
    return out  # each value is checked by SparsityConfig


PARSERS = {"sparsity": _sparsity, "sparsities": _sparsities, "int": int, "str": str,
           "methods": lambda t: tuple(m.strip() for m in t.split(",") if m.strip())}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _fields(cls) -> list[tuple[str, dataclasses.Field]]:
    """(dotted path, field) of every leaf field; nested config dataclasses are flattened."""
    out = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            out += [(f"{f.name}.{path}", g) for path, g in _fields(type(default))]
        else:
            out.append((f.name, f))
    return out


# --help shows a command's options in these groups, in this order; nested configs go by the field holding them
GROUPS = ("model", "data", "sparsity", "training", "evaluation", "sampling", "output")
NESTED_GROUP = {"sparsity": "sparsity", "train": "training", "protocol": "evaluation", "sampling": "sampling"}
FIELD_GROUP = {
    "model": "model", "dtype": "model", "device_map": "model", "ignore_weights": "model", "trust_remote_code": "model",
    "weights": "model",
    "artifact": "model",
    "data": "data", "split": "data", "calib_tokens": "data", "eval_data": "data", "preset": "data",
    "include_path": "data",
    "out": "output", "json": "output", "title": "output",
}
# options a command's config carries but does not act on: not offered there (the config keeps their defaults)
NOT_OFFERED = {
    "demo": {"ignore_weights", "weights"},
    "sweep": {"ignore_weights", "sparsity.sparsity", "weights"},  # --sparsities sets it, point by point
    "compare": {"ignore_weights", "weights"},
    "calibrate": {"ignore_weights"},
    "export": {"weights"},  # an exported folder holds float weights (quantized serving: --weights at generate)
    "diagnose": {"weights"},
    "bench step": {"ignore_weights", "train.steps", "train.lr_scale", "train.average", "train.threshold_jitter",
                   "train.eval_every", "train.select", "train.val_sequences", "train.train_sequences", "train.init",
                   "weights"},
}


# Whole-number options are counts of at least 1, except these (their least value). Checked by the parser, before any
# model is loaded.
LEAST = {"train.seq_len": 2, "protocol.ctx_len": 2, "seq_len": 2, "train.warmup": 0, "train.teacher_topk": 0,
         "train.neurons": 0, "train.seed": 0, "nudges": 0, "sampling.top_k": 0, "sampling.seed": 0}
# text options that must not be empty (an empty prompt has nothing to continue; an empty task list nothing to run)
NOT_EMPTY = {"prompt", "tasks", "data", "model", "out", "artifact", "include_path", "eval_data"}


def _checked(parse, path: str, is_int: bool):
    """`parse`, then the option's bounds: a count >= LEAST (default 1), a text option in NOT_EMPTY non-blank."""
    least = LEAST.get(path, 1)
    name = path.rpartition(".")[2]

    def check(text: str):
        value = parse(text)
        if is_int and value is not None and value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        if name in NOT_EMPTY and isinstance(value, str) and not value.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        return value

    check.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its messages
    return check


def _default_text(default) -> str:
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    if isinstance(default, dict):
        return ",".join(f"{k}={v}" for k, v in default.items()) or "none"
    return "none" if default is None else str(default)


def _add_flags(p: argparse.ArgumentParser, cls, command: str = "") -> None:
    groups = {g: p.add_argument_group(f"{g} options") for g in GROUPS}
    own = p.add_argument_group(f"{command} options" if command else "options")
    hidden = NOT_OFFERED.get(command, set())
    for path, f in _fields(cls):
        if path in hidden:
            continue
        meta = dict(f.metadata)
        head = path.split(".")[0]
        group = groups[NESTED_GROUP[head]] if "." in path else groups.get(FIELD_GROUP.get(path, ""), own)
        default = _default(f)
        kw: dict = {"dest": path, "help": meta.get("help", "").replace("%", "%%")}
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if "positional" in meta:
            group.add_argument(path, nargs=meta["positional"], help=kw["help"])
            continue
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        if meta.get("type") == "override":
            group.add_argument(flag, action="append", default=[], metavar="REGEX=S", **kw)
        elif isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
        else:
            parse = PARSERS[meta["type"]] if "type" in meta else type(default)
            parse = _checked(parse, path, meta.get("type") == "int" or (isinstance(default, int) and parse is int))
            if not meta.get("required"):
                shown = meta.get("shown_default") or _default_text(default)
                kw["help"] += f" (default: {shown.replace('%', '%%')})"
            metavar = None if "choices" in kw else f.name.upper()
            group.add_argument(flag, type=parse, default=default, required=meta.get("required", False), metavar=metavar, **kw)
    own.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(cls, args: dict, prefix: str = ""):
    """The config dataclass from the parsed flags (nested configs built first, so each validates its own fields)."""
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            values[f.name] = _config(type(default), args, f"{prefix}{f.name}.")
        elif prefix + f.name not in args:
            continue  # not offered by this command: the config's default stands
        elif f.metadata.get("type") == "override":
            values[f.name] = _overrides(args[prefix + f.name])
        else:
            values[f.name] = args[prefix + f.name]
    return cls(**values)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line naming the problem, then exit 2."""

    def error(self, message):
        self.exit(2, f"spon: error: {message} (see `{self.prog} --help`)\n")


def _load(name: str):
    module, cls, fn, _ = COMMANDS[name]
    mod = importlib.import_module(f"spon.{module}")
    return getattr(mod, cls), getattr(mod, fn)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spon", description="Activation sparsity + spontaneous neurons for Hugging Face causal LMs.")
    parser.add_argument("--version", action="version", version=f"spon {importlib.metadata.version('spon')}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (_, _, _, help_) in COMMANDS.items():
        *group, leaf = name.split()
        where = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help="benchmarks, measured side by side in one run (JSON)")
                groups[group[0]] = g.add_subparsers(dest="subcommand", required=True, parser_class=_Parser)
            where = groups[group[0]]
        p = where.add_parser(leaf, help=help_, description=help_.replace("%%", "%"))
        p.set_defaults(spon_command=name)
        _add_flags(p, _load(name)[0], name)
    return parser


def run(args: argparse.Namespace) -> int:
    values = vars(args)
    cls, fn = _load(values["spon_command"])
    config = _config(cls, values)  # bad options fail here, before any loading
    progress = not values["quiet"]
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    text = fn(config, progress)
    if text:
        print(text)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """The library's own notices ("spon: ...") as one plain line on stderr; others as Python shows them."""
    if str(message).startswith("spon: "):
        print(message, file=sys.stderr if file is None else file)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `spon`: what it can do
        parser.print_help()
        return 0

    warnings.showwarning = _show_warning
    from spon.distributed import init_from_env, shutdown

    try:
        init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on GPUs)
        return run(args)
    except SponError as e:
        remove_created_dirs()  # a failed command leaves no empty output folder behind
        print(f"spon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_created_dirs()
        print("spon: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()  # leave the process group before exit: a live gloo group can abort at teardown


if __name__ == "__main__":
    sys.exit(main())
