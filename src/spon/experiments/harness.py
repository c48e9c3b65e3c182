"""Zero-shot tasks through the stock lm-evaluation-harness, for dense, sparse and sparse+SPON.

The harness's `HFLM` takes the in-memory model, so the very modules `spon` swapped are evaluated;
`lm-eval` is an optional dependency (pip install lm-eval). Local task folders (`include_path`) work
offline; the standard tasks (arc_easy, hellaswag, piqa, winogrande, boolq, ...) need a dataset hub.
"""

from __future__ import annotations

import contextlib
import logging

from torch import nn

from spon.errors import SponError
from spon.sparsity.sparsify import dense, sparse_modules, without_spon

__all__ = ["harness", "run_tasks", "evaluate_tasks", "task_manager", "render_tasks"]


def harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SponError("--tasks needs the lm-evaluation-harness: pip install lm-eval") from None
    return lm_eval, HFLM, TaskManager


def task_manager(include_path: str | None = None):
    """The harness's task index (it reads every task config once: build it once per run)."""
    _, _, TaskManager = harness()
    return TaskManager(include_path=include_path) if include_path else TaskManager()


def run_tasks(model: nn.Module, tokenizer, tasks: list[str], *, include_path: str | None = None, limit: int | None = None,
              batch_size: int = 4, num_fewshot: int | None = None, log_samples: bool = False, manager=None) -> dict:
    """The harness's results for `tasks` on `model` as it is now: {"results": {task: {metric: value}}, "samples": ...}."""
    lm_eval, HFLM, _ = harness()
    manager = manager or task_manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SponError(
            f"unknown task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or pass --include-path with a local task folder"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=log_samples, verbosity="ERROR",
        )
    except (ConnectionError, OSError) as e:
        raise SponError(
            f"cannot load the data of task(s) {', '.join(tasks)} ({type(e).__name__}); the standard tasks need a dataset "
            "hub; offline, use a local task folder with --include-path"
        ) from None
    results = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))} for task, metrics in out["results"].items()}
    return {"results": results, "samples": out.get("samples") if log_samples else None}


def evaluate_tasks(model: nn.Module, tokenizer, tasks: list[str], **kw) -> dict:
    """run_tasks for the dense, sparse and (when the model has vectors) sparse+SPON variants of one model."""
    if not sparse_modules(model):
        raise SponError("the model is not sparsified; load an artifact or calibrate first")
    variants = {"dense": lambda: dense(model), "sparse": lambda: without_spon(model)}
    if any(m.has_spon for m in sparse_modules(model).values()):
        variants["sparse+SPON"] = contextlib.nullcontext
    out = {}
    kw.setdefault("manager", task_manager(kw.get("include_path")))
    for name, ctx in variants.items():
        with ctx():
            out[name] = run_tasks(model, tokenizer, tasks, **kw)
    return out


def render_tasks(res: dict) -> str:
    """A Markdown table: task x metric x variant (stderr columns left out)."""
    variants = list(res["tasks"])
    lines = ["| task | metric | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for task, metrics in res["tasks"][variants[0]]["results"].items():
        for metric in (k for k in metrics if "stderr" not in k):
            lines.append(f"| {task} | {metric} | " + " | ".join(f"{res['tasks'][v]['results'][task][metric]:.4f}" for v in variants) + " |")
    return "\n".join(lines)
