"""Every `spon.NAME` the README names exists: a function of the package or one of its modules."""

import importlib
import re
from pathlib import Path

import spon

README = Path(__file__).resolve().parents[2] / "README.md"


def _resolve(dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        parent, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(parent), attr)


def test_every_name_the_readme_gives_exists():
    names = set(re.findall(r"(?<![\w.])spon\.([A-Za-z_][\w.]*\w)", README.read_text()))
    assert {"prepare_decode_", "compile_decode_", "warm_guards"} <= names  # the pattern finds the API the README shows
    missing = []
    for name in sorted(names):
        try:
            _resolve(f"spon.{name}")
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert not missing, f"README names spon.{missing} but the package has no such name"
    assert spon.warm_guards is spon.decode.warm_guards
