"""Every table says where it came from, and results/summary.md states the run's findings from its
own tables (on the shared tiny grid run, tests/grid_runs.py)."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from fi.io import write_parquet
from fi.report import provenance
from tests.conftest import REPO
from tests.grid_runs import read_table


def test_a_parquet_file_carries_its_provenance_and_its_sources(tmp_path):
    import torch

    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "cell.parquet")
    own, sources = provenance.read(tmp_path / "cell.parquet")
    assert own["packages"]["torch"] == torch.__version__ and own["torch_threads"] == torch.get_num_threads()
    assert own["cpu"] and sources == []
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI's clean clone too): the commit is recorded
        assert own["git_commit"] == head.stdout.strip() and isinstance(own["git_dirty"], bool)
    write_parquet(pd.DataFrame({"a": [2]}), tmp_path / "table.parquet", sources=[str(tmp_path / "cell.parquet")])
    assert provenance.read(tmp_path / "table.parquet")[1] == [own]
    assert pd.read_parquet(tmp_path / "table.parquet")["a"].tolist() == [2]  # the data is untouched
    # no timestamp: the same process writes the same bytes again
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "again.parquet")
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "cell.parquet").read_bytes()


@pytest.mark.slow
def test_every_table_and_the_summary_say_where_they_came_from(base_run):
    run = base_run
    for name in ("accuracy", "predictions", "head_attribution", "ablation"):
        own, sources = provenance.read(run / "results" / "tables" / f"{name}.parquet")
        assert own is not None and sources, name  # written by the aggregate, from the cells' records
    record = json.loads((run / "results" / "provenance.json").read_text())
    assert record["records"] and record["seeds"]["datasets"] == {"addition": 42, "cipher": 42}
    summary = (run / "results" / "summary.md").read_text()
    assert summary.startswith("# Results summary") and provenance.summary_line(record["records"]) in summary


@pytest.mark.slow
def test_the_summary_states_the_accuracy_table(base_run):
    run = base_run
    summary = (run / "results" / "summary.md").read_text()
    acc = read_table(run, "accuracy")
    for (model, task, shots), g in acc.groupby(["model", "task", "shots"]):
        worst = g.loc[g["cf_acc"].idxmin()]
        assert f"| {model} | {task} | {shots} | {len(g)} | {worst['cf_acc']:.2f} (95% CI" in summary
    heads = json.loads((run / "results" / "heads" / "fi-toy.json").read_text())
    assert "## FI heads" in summary and ", ".join(f"L{a}H{b}" for a, b in heads["heads"]) in summary
