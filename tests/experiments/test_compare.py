"""compare's paired ordering: each method's final perplexity over the first method's, on the same windows."""

import math

import pytest

from spon.experiments.compare import versus_first


def test_versus_first_uses_sparse_where_a_method_kept_no_vectors():
    """A method whose training kept zero vectors has no sparse+SPON scores: its final model is the sparse one."""
    tokens = [100, 100, 100]
    r = {"window_tokens": tokens, "rows": [
        {"method": "teal", "window_nll": {"sparse": [300.0, 310.0, 320.0], "spon": [250.0, 260.0, 270.0]}},
        {"method": "wina", "window_nll": {"sparse": [260.0, 270.0, 280.0]}},  # kept zeros
    ]}
    versus_first(r)
    v = r["rows"][1]["vs_first"]
    assert v["method"] == "teal" and v["ppl_ratio"] == pytest.approx(math.exp(30.0 / 300))  # sparse 810 vs spon 780 nats
    assert v["ci95"] == pytest.approx([math.exp(0.1)] * 2)  # the same +10 nats on every window: a certain ordering
