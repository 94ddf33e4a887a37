"""Faults: a run killed with SIGKILL (twice) and restarted completes with the same tables as an
uninterrupted run; a failing job leaves no output and a log naming the error; a target outside
the grid matches no rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fi.io import atomic_dir, atomic_path, write_parquet
from tests.conftest import REPO, save_random_checkpoint
from tests.grid_runs import BASE_CONFIG, TABLES, dry_run, read_table, tmp_leftovers
from tests.workflow_helpers import snakemake, write_config

CELL = "addition/setting1_nmax9_offset1/shots2"


# ---- atomic writes (fast) -----------------------------------------------------------------------

def test_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half a parquet file")
            raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_temps_of_a_killed_writer_are_cleared_by_the_next_one(tmp_path):
    """SIGKILL skips the cleanup of a temporary file; the next write of the same output removes it
    (and only its own: another output's temporary file in the same folder stays)."""
    (tmp_path / ".out.parquet.abc123_x.tmp").write_bytes(b"stale")
    (tmp_path / ".model.k9z.tmp").mkdir()
    (tmp_path / ".other.parquet.abc123.tmp").write_bytes(b"someone else's")
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "out.parquet")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.parquet.abc123.tmp", "model", "out.parquet"]


# ---- SIGKILL in the middle of jobs --------------------------------------------------------------

def _start(workdir: Path, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2"]
    # its own process group, so that the kill takes snakemake and its job processes alike
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _kill_when(proc: subprocess.Popen, path: Path, delay: float, timeout: float = 300) -> dict:
    """SIGKILL the whole process group `delay` s after `path` appears (the job has started)."""
    deadline = time.monotonic() + timeout
    try:
        while not path.exists():
            if proc.poll() is not None:
                raise AssertionError(f"snakemake exited ({proc.returncode}) before {path} appeared")
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear within {timeout} s")
            time.sleep(0.01)
        time.sleep(delay)
        alive = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    for _ in range(50):  # the job processes die with the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the killed run are still alive")
    return {"alive_at_kill": alive}


def _finished_rules(log_text: str) -> list[str]:
    return [line.split("(Rule: ")[1].rstrip(")") for line in log_text.splitlines() if "(Rule: " in line]


@pytest.fixture(scope="module")
def base(base_run):
    return base_run


@pytest.fixture(scope="module")
def killed(tmp_path_factory, base):
    """The base config in a new folder: killed during train_model, restarted, killed during an
    ablation job, restarted to the end."""
    workdir = tmp_path_factory.mktemp("killed")
    write_config(workdir, BASE_CONFIG)
    info = {"workdir": workdir}
    with open(workdir / "run1.out", "w") as out:
        info["kill1"] = _kill_when(_start(workdir, out), workdir / "logs/train_model/fi-toy.log", delay=0.5)
    info["run1"] = (workdir / "run1.out").read_text()
    info["model_existed_at_kill1"] = (workdir / "results/models/fi-toy").exists()
    info["incomplete_after_kill1"] = sorted(os.listdir(workdir / ".snakemake/incomplete"))
    # the killed snakemake still holds its lock: a new run refuses and says how to release it
    info["locked"] = snakemake(workdir, check=False)
    snakemake(workdir, "--unlock")
    with open(workdir / "run2.out", "w") as out:
        # (the ablation job is a thread of snakemake's process, profiles/default: no imports, it
        # runs for well under a second after its log appears)
        info["kill2"] = _kill_when(_start(workdir, out), workdir / f"logs/ablate/fi-toy/{CELL}.log", delay=0.0)
    info["ablation_existed_at_kill2"] = (workdir / f"results/ablation/fi-toy/{CELL}.parquet").exists()
    info["run2"] = (workdir / "run2.out").read_text()
    snakemake(workdir, "--unlock")
    info["run3"] = snakemake(workdir)
    return info


@pytest.mark.slow
def test_the_kills_hit_running_jobs(killed):
    assert killed["kill1"]["alive_at_kill"] and killed["kill2"]["alive_at_kill"]
    assert not killed["model_existed_at_kill1"], "train_model had already finished at the first kill"
    assert killed["incomplete_after_kill1"], "snakemake had not marked train_model's output incomplete"
    assert not killed["ablation_existed_at_kill2"], "the ablation job had already finished at the second kill"
    locked = killed["locked"]
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr


@pytest.mark.slow
def test_the_restarted_run_completes_and_redoes_only_unfinished_jobs(killed):
    text = killed["run3"].stdout + killed["run3"].stderr
    assert "train_model" not in _finished_rules(killed["run1"])  # the first kill came before its end
    done_before = _finished_rules(killed["run1"]) + _finished_rules(killed["run2"])
    redone = _finished_rules(text)
    assert "train_model" in done_before and "train_model" not in redone  # finished work is kept
    assert "ablate" in redone  # the killed job is redone
    # every job of the grid finished in one of the three runs (a job the kill caught between its
    # end and snakemake's bookkeeping may legitimately be done twice)
    missing = Counter(_finished_rules_of_a_full_run()) - Counter(done_before + redone)
    assert not missing, (missing, done_before, redone)
    assert dry_run(killed["workdir"]).jobs == {}
    assert tmp_leftovers(killed["workdir"]) == []


def _finished_rules_of_a_full_run() -> list[str]:
    # 17 jobs of the base grid + `all`
    return (["dataset"] * 2 + ["train_model", "head_types", "attribute", "discover_heads", "aggregate",
            "aggregate_attribution", "aggregate_ablation", "plot_heads", "plot_ablation", "all"]
            + ["evaluate"] * 2 + ["ablate"] * 2 + ["plot_accuracy"] * 2)


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLES)
def test_same_config_in_another_folder_killed_or_not_gives_identical_tables(killed, base, table):
    """The killed-and-restarted run in its own folder against the uninterrupted base run: exactly
    equal tables (training is seeded and both ran train_model with 2 threads)."""
    pd.testing.assert_frame_equal(read_table(killed["workdir"], table), read_table(base, table), check_exact=True)


# ---- a failing job --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failing_job_leaves_no_output_and_a_log_naming_the_error(tmp_path):
    """A local checkpoint whose weights file is corrupt passes the config check (the file exists)
    and fails in its evaluation job."""
    from fi.engine.models import load_model

    ckpt = save_random_checkpoint(tmp_path / "broken-ckpt")
    (ckpt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 40)
    with pytest.raises(Exception) as err:
        load_model("broken", path=str(ckpt), device="cpu")
    message = str(err.value)
    assert message

    workdir = tmp_path / "run"
    write_config(workdir, {"models": {"broken": {"path": str(ckpt)}},
                           "tasks": {"addition": {"settings": ["setting1"], "offsets": [1], "n_examples": 6}},
                           "shots": [2]})
    target = f"results/eval/broken/{CELL}.parquet"
    proc = snakemake(workdir, target, "--retries", "0", check=False)  # one attempt is enough here
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule evaluate" in text
    assert not (workdir / target).exists()
    assert (workdir / "results/datasets/addition/setting1_nmax9_offset1.jsonl").exists()  # the job before it ran
    assert tmp_leftovers(workdir) == []
    log = workdir / f"logs/evaluate/broken/{CELL}.log"
    assert f"logs/evaluate/broken/{CELL}.log" in text  # snakemake points at it
    log_text = log.read_text()
    assert message in log_text
    assert f"evaluate failed: {type(err.value).__name__}: {message}" in log_text
    # nothing was recorded as done: the next run tries the job again
    assert dry_run(workdir, target).jobs == {"evaluate": {target}}


# ---- targets outside the grid ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def org_model(tmp_path_factory):
    """A grid whose model has an 'org/name' name (a local checkpoint)."""
    workdir = tmp_path_factory.mktemp("org_model")
    ckpt = save_random_checkpoint(workdir / "ckpt")
    write_config(workdir, {"models": {"tiny-org/tiny-llama": {"path": str(ckpt)}},
                           "tasks": {"addition": {"settings": ["setting1"], "offsets": [1], "n_examples": 6}},
                           "shots": [2]})
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("target", [
    "results/eval/../../evil/addition/setting1_nmax9_offset1/shots2.parquet",
    "results/eval/tiny-org--tiny-llama/../../../evil/addition/setting1_nmax9_offset1/shots2.parquet",
    "results/datasets/addition/../../../evil.jsonl",
    "results/models/../../evil",
    "results/eval/..--evil/addition/setting1_nmax9_offset1/shots2.parquet",
    "results/eval/a..b/addition/setting1_nmax9_offset1/shots2.parquet",
    "results/eval/tiny-org/tiny-llama/addition/setting1_nmax9_offset1/shots2.parquet",  # the raw name
    "results/eval/evil/addition/setting1_nmax9_offset1/shots2.parquet",  # not a configured model
    "results/eval/tiny-org--tiny-llama/cipher/maxlen1_offset1/shots2.parquet",  # not a configured task
    "results/models/tiny-org--tiny-llama",  # only built-in models are trained
])
def test_a_target_outside_the_grid_matches_no_rule(org_model, target):
    before = sorted(org_model.parent.rglob("*"))
    proc = snakemake(org_model, target, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "MissingRuleException" in text and "No rule to produce" in text, text[-2000:]
    assert sorted(p for p in org_model.parent.rglob("*") if ".snakemake" not in p.parts) == \
        [p for p in before if ".snakemake" not in p.parts]


@pytest.mark.slow
def test_an_org_slash_model_name_maps_to_a_safe_folder_and_back(org_model):
    target = f"results/eval/tiny-org--tiny-llama/{CELL}.parquet"
    assert dry_run(org_model).jobs["evaluate"] == {target}
    snakemake(org_model, target)
    cell = pd.read_parquet(org_model / target)
    assert set(cell["model"]) == {"tiny-org/tiny-llama"} and len(cell) == 6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../evil", "org/../evil", "a/b/c", "/abs", "org--x"])
def test_a_model_name_that_could_escape_results_stops_the_run(tmp_path, name):
    write_config(tmp_path, {"models": {name: {"builtin": True}}, "tasks": {"addition": {}}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert f"models: {name!r} is not a valid model name" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
