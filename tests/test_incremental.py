"""Incremental reruns: after one finished run, edit the config (or the code, or clone the repo) and
ask snakemake (`-n`) exactly which jobs it would run. Every rule's params carry only its own slice
of the config and the hash of the code it runs, so an edit reruns exactly what depends on it.

Snakemake 9.27's `--list-changes params` lists every output that has metadata, changed or not (its
ParamsChange iterates over the files it compared), so the params check here reads the per-job
reasons of the dry run instead; `--list-changes input` and `code` are exact and used as they are."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fi.plan.grid import (
    Cell,
    ablation_path,
    attribution_path,
    builtin_model_dir,
    dataset_path,
    eval_path,
    head_types_path,
    heads_path,
)
from tests.conftest import REPO
from tests.grid_runs import BASE_CONFIG, copy_run, dry_run, list_changes

pytestmark = pytest.mark.slow

M = "fi-toy"
ADD = ("addition", "setting1_nmax9_offset1")
CIP = ("cipher", "maxlen1_offset1")
PARAMS_CHANGED = "Params have changed since last execution"


def ev(task, variant, shots=2):
    return eval_path(Cell(M, task, variant, shots))


def ab(task, variant, shots=2):
    return ablation_path(Cell(M, task, variant, shots))


ACCURACY = "results/tables/accuracy.parquet"
AGGREGATE_OUTPUTS = {ACCURACY, "results/tables/accuracy_paper_format.csv", "results/tables/predictions.parquet"}
ACC_PLOTS = {"results/plots/accuracy_addition.png", "results/plots/accuracy_cipher.png"}
HEADS_PLOT = {f"results/plots/heads_{M}.png"}
ABL_PLOT = {"results/plots/task_generalization.png"}
SUMMARY = {"results/summary.md"}  # states findings from the tables: reruns after any aggregate

# Every job of the base grid, by rule (first output of each job).
FULL = {
    "dataset": {dataset_path(*ADD), dataset_path(*CIP)},
    "train_model": {builtin_model_dir(M)},
    "evaluate": {ev(*ADD), ev(*CIP)},
    "attribute": {attribution_path(Cell(M, *ADD, 4))},  # the discovery cell: addition, 4 shots
    "head_types": {head_types_path(M)},
    "discover_heads": {heads_path(M)},
    "ablate": {ab(*ADD), ab(*CIP)},
    "aggregate": {ACCURACY},
    "aggregate_attribution": {"results/tables/head_attribution.parquet"},
    "aggregate_ablation": {"results/tables/ablation.parquet"},
    "plot_accuracy": ACC_PLOTS,
    "plot_heads": HEADS_PLOT,
    "plot_ablation": ABL_PLOT,
    "summary": SUMMARY,
}


@pytest.fixture(scope="module")
def base(base_run):
    return base_run


@pytest.fixture
def run(base, tmp_path):
    """A private copy of the finished base run."""
    return copy_run(base, tmp_path / "run")


def edit_config(workdir: Path, edit) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_fresh_folder_plans_the_whole_grid(tmp_path):
    """The expectations below are the real DAG: an empty folder plans exactly FULL."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(BASE_CONFIG))
    assert dry_run(tmp_path).jobs == FULL


@pytest.mark.parametrize("edit", [
    pytest.param(lambda c: None, id="unchanged"),
    # device and batch size change no number: resources, not params
    pytest.param(lambda c: c["models"][M].update(batch_size=7, device="cpu"), id="batch_size_and_device"),
    # the same config written differently (order of keys, defaults spelled out)
    pytest.param(lambda c: c["tasks"]["addition"].update(seed=42, n_demos=32), id="defaults_spelled_out"),
])
def test_an_unchanged_config_schedules_nothing(run, edit):
    edit_config(run, edit)
    plan = dry_run(run)
    assert plan.jobs == {}, plan.text[-3000:]
    assert "Nothing to be done" in plan.text


def test_nothing_lists_as_changed(run):
    assert list_changes(run, "input") == set()
    assert list_changes(run, "code") == set()


def test_adding_a_shot_count_schedules_only_the_new_cells(run):
    edit_config(run, lambda c: c.update(shots=[2, 4]))
    plan = dry_run(run)
    # ablation.shots is its own list, so no ablation cell is new; the datasets hold n_demos demos
    assert plan.jobs == {
        "evaluate": {ev(*ADD, 4), ev(*CIP, 4)},
        "aggregate": {ACCURACY},
        "plot_accuracy": ACC_PLOTS,
        "summary": SUMMARY,
    }
    assert plan.with_reason(PARAMS_CHANGED) == set()
    assert list_changes(run, "input") == AGGREGATE_OUTPUTS  # the set of cells grew


def test_adding_an_offset_schedules_only_the_new_variant(run):
    edit_config(run, lambda c: c["tasks"]["addition"].update(offsets=[1, 2]))
    new = ("addition", "setting1_nmax9_offset2")
    plan = dry_run(run)
    # a task not listed in ablation.variants is ablated on all its variants: one new ablation cell
    assert plan.jobs == {
        "dataset": {dataset_path(*new)},
        "evaluate": {ev(*new)},
        "ablate": {ab(*new)},
        "aggregate": {ACCURACY},
        "aggregate_ablation": {"results/tables/ablation.parquet"},
        "plot_accuracy": ACC_PLOTS,
        "plot_ablation": ABL_PLOT,
        "summary": SUMMARY,
    }
    assert plan.with_reason(PARAMS_CHANGED) == set()
    assert list_changes(run, "input") == AGGREGATE_OUTPUTS | {"results/tables/ablation.parquet"}


def test_changing_cipher_reruns_only_cipher_and_what_reads_it(run):
    edit_config(run, lambda c: c["tasks"]["cipher"].update(n_examples=5))
    plan = dry_run(run)
    assert plan.jobs == {
        "dataset": {dataset_path(*CIP)},
        "evaluate": {ev(*CIP)},
        "ablate": {ab(*CIP)},
        "aggregate": {ACCURACY},
        "aggregate_ablation": {"results/tables/ablation.parquet"},
        "plot_accuracy": ACC_PLOTS,
        "plot_ablation": ABL_PLOT,
        "summary": SUMMARY,
    }
    assert plan.with_reason(PARAMS_CHANGED) == {dataset_path(*CIP)}


def test_changing_addition_reruns_addition_and_the_heads_found_on_it(run):
    edit_config(run, lambda c: c["tasks"]["addition"].update(n_examples=5))
    plan = dry_run(run)
    # the FI heads are discovered on an addition cell, so the cipher *ablation* (which ablates
    # those heads) reruns too; cipher's dataset and evaluation do not, nor does the model
    assert plan.jobs == {
        "dataset": {dataset_path(*ADD)},
        "evaluate": {ev(*ADD)},
        "attribute": FULL["attribute"],
        "discover_heads": FULL["discover_heads"],
        "ablate": {ab(*ADD), ab(*CIP)},
        "aggregate": {ACCURACY},
        "aggregate_attribution": FULL["aggregate_attribution"],
        "aggregate_ablation": FULL["aggregate_ablation"],
        "plot_accuracy": ACC_PLOTS,
        "plot_heads": HEADS_PLOT,
        "plot_ablation": ABL_PLOT,
        "summary": SUMMARY,
    }
    assert plan.with_reason(PARAMS_CHANGED) == {dataset_path(*ADD)}
    assert not {dataset_path(*CIP), ev(*CIP), builtin_model_dir(M), head_types_path(M)} & plan.outputs()


def test_changing_the_dpi_reruns_only_the_plots(run):
    edit_config(run, lambda c: c.setdefault("plots", {}).update(dpi=100))
    plan = dry_run(run)
    assert plan.jobs == {"plot_accuracy": ACC_PLOTS, "plot_heads": HEADS_PLOT, "plot_ablation": ABL_PLOT}
    assert plan.with_reason(PARAMS_CHANGED) == ACC_PLOTS | HEADS_PLOT | ABL_PLOT


def test_changing_the_reference_reruns_only_the_accuracy_plots(run):
    (run / "reference.csv").write_text("model_name,setting,nmax,offset,n_icl_example,cf_acc,orig_acc\n"
                                       "paper-model,setting1,9,1,2,0.5,0.25\n")
    edit_config(run, lambda c: c.setdefault("plots", {}).update(reference="reference.csv"))
    plan = dry_run(run)
    assert plan.jobs == {"plot_accuracy": ACC_PLOTS}
    assert plan.with_reason(PARAMS_CHANGED) == ACC_PLOTS


def test_changing_training_reruns_the_model_and_everything_after_it(run):
    edit_config(run, lambda c: c["models"][M]["train"].update(steps=9))
    plan = dry_run(run)
    expected = {rule: outs for rule, outs in FULL.items() if rule != "dataset"}
    assert plan.jobs == expected
    assert plan.with_reason(PARAMS_CHANGED) == {builtin_model_dir(M)}


# ---- a clone of the repository with the results copied in ----------------------------------------

def _checkout(dst: Path) -> str:
    """The repository as a fresh checkout (every file's mtime is now): `git clone` when the working
    tree is committed, else a copy of the tracked and untracked-but-not-ignored files (what the
    next commit would hold), so that uncommitted changes are what is tested."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {status.stderr.strip()}")
    if not status.stdout.strip():
        subprocess.run(["git", "clone", "-q", str(REPO), str(dst)], check=True)
        return "git clone"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst / rel)  # content only: new mtime, as in a clone
    return "copy of the working tree"


@pytest.fixture
def clone(base, tmp_path):
    """A fresh checkout holding the base run's results/, logs/ and config.yaml (mtimes kept) and
    its .snakemake/ (the metadata: recorded params, input sets)."""
    dst = tmp_path / "clone"
    dst.mkdir()
    _checkout(dst)
    for name in ("results", "logs", ".snakemake"):
        shutil.copytree(base / name, dst / name, symlinks=True)
    shutil.copy2(base / "config.yaml", dst / "config.yaml")
    return dst


def test_a_clone_with_the_results_copied_in_schedules_nothing(clone):
    snakefile = clone / "Snakefile"
    newest_output = max(p.stat().st_mtime for p in (clone / "results").rglob("*"))
    assert (clone / "workflow/scripts/own_process.py").stat().st_mtime > newest_output  # a real clone
    plan = dry_run(clone, snakefile=snakefile)
    assert plan.jobs == {}, plan.text[-3000:]
    assert "Using workflow specific profile" in plan.text  # profiles/default, with its rerun-triggers
    assert list_changes(clone, "input", snakefile=snakefile) == set()
    # Why the workflow's profile leaves out Snakemake's own `code` trigger: it judges a `script:`
    # rule by its script's mtime, and in a clone every script is newer than every result, so it
    # reruns the training and all that follows. (A `run:` rule it judges by the block's text, which
    # a clone does not change: the datasets stay.)
    with_code = dry_run(clone, "--rerun-triggers", "mtime", "params", "input", "software-env", "code",
                        snakefile=snakefile)
    assert with_code.jobs == {rule: jobs for rule, jobs in FULL.items() if rule != "dataset"}
    assert with_code.with_reason("Code has changed") == FULL["train_model"]


def test_a_clone_reruns_a_rule_whose_adapter_changed(clone, monkeypatch):
    snakefile = clone / "Snakefile"
    monkeypatch.chdir(clone)  # the clone's own fi_workflow (see below)
    env = {"PYTHONPATH": str(clone)}
    adapters = clone / "fi_workflow/jobs.py"
    later = adapters.stat().st_mtime + 60
    os.utime(adapters, (later, later))  # only touched: no rerun
    assert dry_run(clone, snakefile=snakefile, env=env).jobs == {}
    text = adapters.read_text()
    old = "model_name=job.params.model_name,"
    assert text.count(old) == 1
    adapters.write_text(text.replace(old, "model_name=str(job.params.model_name),"))  # code changed: its rule reruns
    plan = dry_run(clone, snakefile=snakefile, env=env)
    assert plan.jobs == {"plot_heads": HEADS_PLOT}
    assert plan.with_reason(PARAMS_CHANGED) == HEADS_PLOT


def test_without_its_metadata_a_copied_run_cannot_see_param_changes(clone):
    """Copying results/ without .snakemake/ schedules nothing too (no metadata, no params, input or
    code trigger; the mtimes agree), but then a config edit goes unseen: .snakemake/metadata is
    part of the results and has to be copied along (README)."""
    shutil.rmtree(clone / ".snakemake")
    snakefile = clone / "Snakefile"
    assert dry_run(clone, snakefile=snakefile).jobs == {}
    edit_config(clone, lambda c: c["tasks"]["cipher"].update(n_examples=5))
    assert dry_run(clone, snakefile=snakefile).jobs == {}


# ---- edits inside the fi package ----------------------------------------------------------------

def _edit_stage_function(name: str):
    def edit(path: Path) -> None:
        text = path.read_text()
        assert text.count(f"def {name}(") == 1
        # a code change (its parameters become keyword-only; the adapters pass them all by name)
        path.write_text(text.replace(f"def {name}(", f"def {name}(*_edited, ", 1))
    return edit


def _append_code(path: Path) -> None:
    path.write_text(path.read_text() + "\nEDITED = 1\n")


# Editing one module reruns the jobs whose code reaches it (their code hash changes) and what reads
# their outputs (their inputs are new), nothing else: fi.methods.evaluation is run by evaluate, discover_heads
# (checking the heads) and ablate, not by the datasets, the model, attribution or head types.
AFTER_EVALUATION = {rule: FULL[rule] for rule in ("evaluate", "discover_heads", "ablate", "aggregate",
                                                  "aggregate_attribution", "aggregate_ablation", "plot_accuracy",
                                                  "plot_heads", "plot_ablation", "summary")}
PLOTS = {"plot_accuracy": ACC_PLOTS, "plot_heads": HEADS_PLOT, "plot_ablation": ABL_PLOT}


@pytest.mark.parametrize("module,edit,expected,changed", [
    # (ablate's code changed too, but snakemake names only its first reason: its new heads file)
    pytest.param("methods/evaluation.py", _append_code, AFTER_EVALUATION, FULL["evaluate"] | FULL["discover_heads"],
                 id="evaluation"),
    pytest.param("report/plots.py", _append_code, PLOTS, ACC_PLOTS | HEADS_PLOT | ABL_PLOT, id="plots"),
    pytest.param("stages.py", _edit_stage_function("plot_heads"), {"plot_heads": HEADS_PLOT}, HEADS_PLOT,
                 id="one_stage_function"),
])
def test_editing_a_module_reruns_exactly_the_jobs_that_run_it(clone, module, edit, expected, changed, monkeypatch):
    snakefile = clone / "Snakefile"
    # the clone's own fi package: `python -m snakemake` imports it from the current folder first,
    # the jobs from PYTHONPATH
    monkeypatch.chdir(clone)
    env = {"PYTHONPATH": str(clone)}
    assert dry_run(clone, snakefile=snakefile, env=env).jobs == {}  # same code, same hashes
    edit(clone / "fi" / module)
    plan = dry_run(clone, snakefile=snakefile, env=env)
    assert plan.jobs == expected
    assert plan.with_reason(PARAMS_CHANGED) == changed
