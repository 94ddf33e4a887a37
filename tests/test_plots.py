"""Figures from our table and from a file in the paper's CSV format."""

from __future__ import annotations

import pandas as pd
import pytest

from fi.report.plots import plot_accuracy
from fi.report.tables import from_paper_format
from tests.conftest import REFERENCE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def our_table():
    rows = []
    for setting in ("setting1", "setting2"):
        for offset in (-1, 1):
            for shots in (2, 4, 8):
                acc = min(1.0, 0.2 * shots / 2)
                rows.append(dict(model="m", model_name="m", task="addition", setting=setting, nmax=9,
                                 offset=offset, shots=shots, n=100, cf_acc=acc, orig_acc=1 - acc,
                                 cf_acc_lo=acc * 0.9, cf_acc_hi=min(1, acc * 1.1),
                                 orig_acc_lo=(1 - acc) * 0.9, orig_acc_hi=min(1, (1 - acc) * 1.1)))
    return pd.DataFrame(rows)


def test_plot_our_table(tmp_path):
    out = tmp_path / "acc.png"
    plot_accuracy(our_table(), str(out))
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_plot_with_reference_overlay(tmp_path):
    out = tmp_path / "acc.pdf"
    ref = our_table().assign(cf_acc=0.5)
    plot_accuracy(our_table(), str(out), reference=ref)
    assert out.read_bytes()[:4] == b"%PDF"


def test_plot_empty_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plot_accuracy(our_table().iloc[:0], str(tmp_path / "x.png"))


def test_plot_the_papers_released_table(tmp_path):
    path = REFERENCE / "paper_results_aggregated.csv"
    if not path.exists():
        pytest.skip(f"paper table not found at {path} (set FI_REFERENCE_DIR)")
    paper = from_paper_format(pd.read_csv(path, index_col=0))
    # the paper's Figure 1: off-by-one (offset +1) at nmax 9, every model and setting
    sub = paper[(paper["nmax"] == 9) & (paper["offset"] == 1)]
    out = tmp_path / "paper.png"
    plot_accuracy(sub, str(out))
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 50_000
