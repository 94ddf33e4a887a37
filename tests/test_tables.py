"""Wilson intervals, cell summaries and the paper's CSV format."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fi.report.tables import PAPER_COLUMNS, from_paper_format, summarise_cell, to_paper_format, wilson_interval
from tests.conftest import REFERENCE


@pytest.mark.parametrize("k,n,lo,hi", [
    # Wilson score intervals at z = 1.96 (hand-computed from the closed form)
    (0, 10, 0.0, 0.27753), (10, 10, 0.72247, 1.0), (5, 10, 0.23659, 0.76341), (81, 100, 0.72221, 0.87491),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got_lo, got_hi = wilson_interval(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_contains_estimate_and_handles_empty():
    k = np.arange(0, 51)
    lo, hi = wilson_interval(k, 50)
    assert np.all(lo <= k / 50 + 1e-12) and np.all(hi >= k / 50 - 1e-12)
    assert np.all((lo >= 0) & (hi <= 1))
    lo0, hi0 = wilson_interval(0, 0)
    assert math.isnan(lo0) and math.isnan(hi0)


def test_summarise_cell_counts_flags():
    per_example = pd.DataFrame({
        "cf_correct": [True, True, False, True], "orig_correct": [False, False, True, False],
        "normal_correct": [True] * 4, "normal_on_contrast_correct": [False] * 4,
        "contrast_logit_diff": [-1.0, -2.0, 1.0, -3.0], "normal_logit_diff": [2.0] * 4,
    })
    row = summarise_cell(per_example, {"model": "m", "shots": 4})
    assert row["n"] == 4 and row["cf_acc"] == 0.75 and row["orig_acc"] == 0.25
    assert row["normal_acc"] == 1.0 and row["normal_on_contrast_acc"] == 0.0
    assert row["cf_acc_lo"] < 0.75 < row["cf_acc_hi"]
    assert row["contrast_logit_diff"] == pytest.approx(-1.25)


def test_paper_format_round_trip():
    table = pd.DataFrame({"model_name": ["org/m"] * 2, "model": ["org/m"] * 2, "task": ["addition"] * 2,
                          "setting": ["setting1"] * 2, "nmax": [9, 9], "offset": [1, 1], "shots": [2, 4],
                          "cf_acc": [0.5, 0.9], "orig_acc": [0.4, 0.1]})
    paper = to_paper_format(table)
    assert list(paper.columns) == PAPER_COLUMNS
    back = from_paper_format(paper)
    assert back["shots"].tolist() == [2, 4] and back["model"].tolist() == ["org/m"] * 2


def test_reads_the_papers_released_table():
    path = REFERENCE / "paper_results_aggregated.csv"
    if not path.exists():
        pytest.skip(f"paper table not found at {path} (set FI_REFERENCE_DIR)")
    df = from_paper_format(pd.read_csv(path, index_col=0))
    assert len(df) == 5010
    assert df["model"].nunique() == 8
    assert df["cf_acc"].between(0, 1).all()


def test_rejects_a_table_without_the_papers_columns():
    with pytest.raises(ValueError, match="missing columns"):
        from_paper_format(pd.DataFrame({"model_name": ["x"]}))
