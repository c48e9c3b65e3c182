"""Formatting shared by the reports: a figure with its 95% interval."""

from __future__ import annotations

import math

__all__ = ["with_ci"]


def with_ci(value, ci=None, spec: str = ".3f") -> str:
    """'24.089 [22.9, 25.4]'; '-' for a missing value; the bare figure when no interval was measured."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a (no gap)"
    text = format(value, spec)
    if not ci or ci[0] is None or any(isinstance(c, float) and math.isnan(c) for c in ci):
        return text
    return f"{text} [{format(ci[0], spec)}, {format(ci[1], spec)}]"
