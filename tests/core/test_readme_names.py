"""Every `spon.NAME` the README and the pages of docs/ name exists: a function of the package or one of its modules."""

import importlib
import re
from pathlib import Path

import spon

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").glob("*.md")))


def _resolve(dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        parent, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(parent), attr)


def test_every_name_the_readme_gives_exists():
    pattern = r"(?<![\w.])spon\.([A-Za-z_][\w.]*\w)"
    assert {"prepare_decode_", "compile_decode_", "greedy_generate"} <= set(re.findall(pattern, README.read_text()))
    names = {n for doc in DOCS for n in re.findall(pattern, doc.read_text())}
    missing = []
    for name in sorted(names):
        try:
            _resolve(f"spon.{name}")
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert not missing, f"the docs name spon.{missing} but the package has no such name"
    assert spon.warm_guards is spon.serving.decode.warm_guards
