"""Error bars in the plots come from each row's 95% interval."""

import json
from pathlib import Path

from spon.io.plots import _yerr, plot_compare


def _row(method: str, sparse: float, spon: float | None, ci: dict | None) -> dict:
    gap = None if spon is None else (sparse - spon) / (sparse - 10.0)
    return {"method": method, "ppl_sparse": sparse, "ppl_spon": spon, "gap_recovered": gap, "ci95": ci}


def test_yerr_is_asymmetric_distance_to_interval_ends():
    rows = [_row("a", 20.0, 15.0, {"ppl_sparse": [18.0, 23.0]}), _row("b", 30.0, 20.0, {"ppl_sparse": [29.0, 35.0]})]
    assert _yerr(rows, "ppl_sparse") == [[2.0, 1.0], [3.0, 5.0]]
    below, above = _yerr([{"gap_recovered": 0.5, "ci95": {"gap_recovered": [0.4, 0.7]}}], "gap_recovered", 100)
    assert abs(below[0] - 10.0) < 1e-9 and abs(above[0] - 20.0) < 1e-9


def test_yerr_is_none_when_any_row_lacks_an_interval():
    rows = [_row("a", 20.0, 15.0, {"ppl_sparse": [18.0, 23.0]}), _row("old", 30.0, 20.0, None)]
    assert _yerr(rows, "ppl_sparse") is None
    assert _yerr(rows, "ppl_spon") is None


def test_plot_compare_draws_with_and_without_intervals(tmp_path: Path):
    r = {"model": {"name": "tiny"}, "sparsity": 0.5, "ppl_dense": 10.0,
         "rows": [_row("teal", 20.0, 15.0, {"ppl_sparse": [18.0, 23.0], "ppl_spon": [14.0, 16.5], "gap_recovered": [0.4, 0.6]}),
                  _row("no-spon", 25.0, None, {"ppl_sparse": [22.0, 28.0]})]}
    assert plot_compare(json.loads(json.dumps(r)), tmp_path) == ["compare.png"]
    old = {**r, "rows": [{**x, "ci95": None} for x in r["rows"]]}
    assert plot_compare(old, tmp_path) == ["compare.png"]
    assert (tmp_path / "compare.png").stat().st_size > 0
