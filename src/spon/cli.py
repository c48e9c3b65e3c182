"""`spon` command line. Each subcommand is one row of `COMMANDS`: a config dataclass, whose fields (nested configs
flattened) become the flags with their defaults, choices and help, and one function that runs it and returns the
text to print. Nothing else lives here: no orchestration, no rendering."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import warnings

from .config import check_sparsity
from .errors import SponError

__all__ = ["main", "build_parser", "COMMANDS"]

# command -> (module, config class, function, help); "bench X" is `spon bench X`
COMMANDS = {
    "demo": ("experiments.demo", "DemoConfig", "demo", "the main job: calibrate 50%% sparsity, train SPON, evaluate, generate, write a report"),
    "sweep": ("experiments.sweep", "SweepConfig", "sweep", "calibrate, train SPON and evaluate at several sparsities; table + PNG plots"),
    "compare": ("experiments.compare", "CompareConfig", "compare", "each peer's rule with and without SPON at the same sparsity: table + plot"),
    "calibrate": ("experiments.commands", "CalibrateJob", "calibrate", "calibrate thresholds and write an artifact"),
    "train": ("experiments.commands", "TrainJob", "train", "train SPON vectors (calibrating first unless --artifact is given)"),
    "eval": ("experiments.commands", "EvalJob", "evaluate", "perplexity (or lm-eval tasks) of dense, sparse and sparse+SPON"),
    "diagnose": ("experiments.diagnose", "DiagnoseConfig", "run_diagnose", "per-layer drift from dense and always-active channels; JSON + PNG"),
    "report": ("experiments.report", "ReportConfig", "report", "one Markdown page with plots from folders written by the other commands"),
    "export": ("experiments.commands", "ExportJob", "export", "write a folded model folder that `spon` loads and runs sparse"),
    "generate": ("experiments.commands", "GenerateJob", "generate", "greedy generation with the sparse (+SPON) model, or --dense"),
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


def _fields(cls) -> list[tuple[str, dataclasses.Field]]:
    """(dotted path, field) of every leaf field; nested config dataclasses are flattened."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += [(f"{f.name}.{path}", g) for path, g in _fields(type(default))]
        else:
            out.append((f.name, f))
    return out


def _add_flags(p: argparse.ArgumentParser, cls) -> None:
    for path, f in _fields(cls):
        meta = dict(f.metadata)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kw: dict = {"dest": path, "help": meta.get("help", "").replace("%", "%%")}
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if "positional" in meta:
            p.add_argument(path, nargs=meta["positional"], help=kw["help"])
            continue
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        if meta.get("type") == "override":
            p.add_argument(flag, action="append", default=[], metavar="REGEX=S", **kw)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
        else:
            parse = PARSERS[meta["type"]] if "type" in meta else type(default)
            if default is not None and not isinstance(default, tuple):
                kw["help"] += f" (default {default})"
            p.add_argument(flag, type=parse, default=default, required=meta.get("required", False), metavar=f.name.upper(), **kw)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(cls, args: dict, prefix: str = ""):
    """The config dataclass from the parsed flags (nested configs built first, so each validates its own fields)."""
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            values[f.name] = _config(type(default), args, f"{prefix}{f.name}.")
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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        _add_flags(p, _load(name)[0])
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
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    from .distributed import init_from_env, shutdown

    try:
        init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on GPUs)
        return run(args)
    except SponError as e:
        print(f"spon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spon: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()  # leave the process group before exit: a live gloo group can abort at teardown


if __name__ == "__main__":
    sys.exit(main())
