"""A model with `evaluate_jobs: task` evaluates all its cells of one task family in one job, with one
load of the model (rule evaluate_task), and the accuracy tables are those of a job per cell."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from fi.plan.grid import PATHS
from tests.grid_runs import copy_run, dry_run, read_table
from tests.workflow_helpers import snakemake

pytestmark = pytest.mark.slow

M = "fi-toy"


def per_task(config: dict) -> None:
    config["models"][M]["evaluate_jobs"] = "task"


def edit_config(workdir, *edits) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for edit in edits:
        edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def task_output(task: str) -> str:
    return PATHS["eval_task"].format(model=M, task=task)


@pytest.fixture(scope="module")
def base(base_run):
    return base_run


@pytest.fixture(scope="module")
def per_task_run(base, tmp_path_factory):
    """The base run switched to one evaluation job per task family, and run."""
    run = copy_run(base, tmp_path_factory.mktemp("per_task") / "run")
    edit_config(run, per_task)
    plan = dry_run(run)
    snakemake(run)
    return run, plan


def test_switching_plans_one_job_per_task_family_and_no_cell_jobs(per_task_run):
    _, plan = per_task_run
    assert plan.jobs["evaluate_task"] == {task_output("addition"), task_output("cipher")}
    assert "evaluate" not in plan.jobs
    # the datasets, the model and every other stage are untouched
    assert not {"dataset", "train_model", "attribute", "ablate"} & set(plan.jobs)


@pytest.mark.parametrize("table", ["accuracy", "predictions"])
def test_the_tables_are_those_of_a_job_per_cell(base, per_task_run, table):
    run, _ = per_task_run
    pd.testing.assert_frame_equal(read_table(run, table), read_table(base, table))


def test_each_job_loads_the_model_once(per_task_run):
    run, _ = per_task_run
    for task in ("addition", "cipher"):
        text = (run / "logs" / "evaluate_task" / M / f"{task}.log").read_text()
        assert text.count(f"model {M} booted") == 1, text


def test_adding_a_variant_reruns_only_its_familys_job(per_task_run, tmp_path):
    run = copy_run(per_task_run[0], tmp_path / "run")
    edit_config(run, lambda c: c["tasks"]["addition"].update(offsets=[1, 2]))
    plan = dry_run(run)
    assert plan.jobs["evaluate_task"] == {task_output("addition")}
    assert "Params have changed" in plan.reasons[task_output("addition")]
    assert "evaluate" not in plan.jobs
