"""The whole DAG, for real: snakemake on a tiny config, tables checked, then nothing reruns."""

from __future__ import annotations

import pandas as pd
import pytest

from fi.report.tables import PAPER_COLUMNS
from tests.workflow_helpers import TINY_CONFIG, scheduled_jobs, snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grid")
    write_config(workdir, TINY_CONFIG)
    snakemake(workdir)
    return workdir


def test_tables_have_the_grid(tiny_run):
    table = pd.read_parquet(tiny_run / "results/tables/accuracy.parquet")
    # 1 model x 1 setting x 2 offsets x 2 shot counts
    assert len(table) == 4
    assert set(table["offset"]) == {1, -1} and set(table["shots"]) == {2, 4}
    assert (table["n"] == 6).all() and (table["model"] == "fi-toy").all()
    for acc in ("cf_acc", "orig_acc", "normal_acc"):
        assert table[acc].between(0, 1).all()
        assert (table[f"{acc}_lo"] <= table[acc] + 1e-12).all() and (table[acc] <= table[f"{acc}_hi"] + 1e-12).all()
    paper = pd.read_csv(tiny_run / "results/tables/accuracy_paper_format.csv")
    assert list(paper.columns) == PAPER_COLUMNS and len(paper) == 4
    preds = pd.read_parquet(tiny_run / "results/tables/predictions.parquet")
    assert len(preds) == 4 * 6
    # the per-example flags agree with the table
    cf = preds.groupby(["offset", "shots"])["cf_correct"].mean()
    for _, row in table.iterrows():
        assert row["cf_acc"] == pytest.approx(cf[(row["offset"], row["shots"])])


def test_outputs_and_logs_exist(tiny_run):
    assert (tiny_run / "results/plots/accuracy_addition.png").stat().st_size > 10_000
    model = tiny_run / "results/models/fi-toy"
    assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    assert not list(model.glob("*.bin")) and not list(model.glob("*.pt"))
    curve = pd.read_parquet(model / "training_curve.parquet")
    assert curve["step"].iloc[-1] == 7
    assert (tiny_run / "logs/train_model/fi-toy.log").read_text().count("trained 8 steps") == 1


def test_each_job_logs_to_its_own_log(tiny_run):
    """The evaluate jobs ran as threads of snakemake's process (profiles/default), two at a time:
    each log holds its own cell's result line and no other's."""
    logs = sorted((tiny_run / "logs/evaluate/fi-toy/addition").rglob("*.log"))
    assert len(logs) == 4
    for path in logs:
        variant, shots = path.parent.name, path.stem.removeprefix("shots")
        lines = [line for line in path.read_text().splitlines() if "cf_acc" in line]
        assert len(lines) == 1 and f"fi-toy addition {variant} shots={shots}: cf_acc" in lines[0], path


def test_second_run_has_nothing_to_do(tiny_run):
    assert scheduled_jobs(tiny_run) == {}
    proc = snakemake(tiny_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_bad_config_fails_before_any_job(tmp_path):
    bad = {**TINY_CONFIG, "shots": [2, "4"]}
    write_config(tmp_path, bad)
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert "shots.1: '4' is not of type 'integer'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
