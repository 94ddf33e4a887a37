"""The tiny grid through a real SLURM: `workflow/scripts/local_slurm.sh` installs and starts a
single-node cluster on this machine, `snakemake --profile profiles/slurm` submits the jobs with
sbatch, and the tables equal those of the local run of the same config.

Needs root and apt (Debian/Ubuntu) or the slurm packages already installed; skips with the reason
otherwise. Always stops the cluster it started."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.grid_runs import BASE_CONFIG, TABLES, read_table
from tests.workflow_helpers import write_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = REPO / "workflow" / "scripts" / "local_slurm.sh"
# the rules that go to SLURM, with their job counts in the base grid; the rest are localrules
SUBMITTED = {"dataset": 2, "train_model": 1, "evaluate": 2, "attribute": 1, "head_types": 1, "discover_heads": 1,
             "ablate": 2}
LOCAL = {"aggregate", "aggregate_attribution", "aggregate_ablation", "plot_accuracy", "plot_heads", "plot_ablation",
         "summary", "all"}
TIMEOUT_S = 900
BUSY_WAIT_S = 600  # how long to wait for a cluster another session started to go away


def _sh(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("local SLURM needs root (munged runs as user munge, slurmd launches jobs)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    have_packages = all(shutil.which(p) or Path("/usr/sbin", p).exists() for p in ("slurmctld", "slurmd", "munged"))
    if not have_packages and shutil.which("apt-get") is None:
        pytest.skip("the slurm packages are not installed and there is no apt-get to install them")
    try:
        install = _sh("install", timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("installing slurm took longer than 15 minutes")
    if install.returncode != 0:
        pytest.skip(f"installing slurm failed:\n{install.stderr[-2000:]}")
    statedir = tempfile.mkdtemp(prefix="fi-slurm-", dir="/tmp")  # short: slurmd's socket paths
    try:
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            start = _sh("start", statedir, timeout=180)
            if start.returncode == 0:
                break
            busy = re.search(r"a local SLURM from state dir (\S+) is running", start.stderr)
            if not busy:
                pytest.fail(f"local_slurm.sh start failed:\n{start.stderr[-4000:]}")
            if time.monotonic() > deadline:  # another test session's cluster (one per machine)
                pytest.skip(f"another local SLURM (state dir {busy.group(1)}) stayed up for {BUSY_WAIT_S} s")
            time.sleep(10)
        yield statedir
    finally:
        stop = _sh("stop", statedir, timeout=120)
        shutil.rmtree(statedir, ignore_errors=True)
        assert stop.returncode == 0, stop.stderr


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_run")
    write_config(workdir, BASE_CONFIG)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", "none"]
    t0 = time.perf_counter()
    # snakemake ignores SIGTERM while jobs are queued: its own process group, killed on timeout
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"snakemake on SLURM did not finish within {TIMEOUT_S} s:\n{out[-6000:]}")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, out[-8000:]
    return {"workdir": workdir, "out": out, "seconds": seconds}


def _squeue_all() -> dict[str, tuple[str, int, str]]:
    """Job id -> (comment, CPUs, state), finished jobs included (MinJobAge keeps them)."""
    proc = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%k|%C|%T"], capture_output=True, text=True,
                          timeout=30, check=True)
    rows = (line.split("|") for line in proc.stdout.splitlines() if line.strip())
    return {i: (comment, int(cpus), state) for i, comment, cpus, state in rows}


def test_the_model_jobs_went_through_sbatch(slurm_run, record_property):
    record_property("slurm_run_seconds", round(slurm_run["seconds"], 1))
    out, workdir = slurm_run["out"], slurm_run["workdir"]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    assert len(submitted) == sum(SUBMITTED.values()), out[-6000:]
    logs = sorted((workdir / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))
    assert sorted(Path(log) for _, log in submitted) == logs
    per_rule = {}
    for log in logs:
        rule = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert per_rule == SUBMITTED
    assert set(re.findall(r"^localrule (\w+):", out, re.M)) == LOCAL  # read tables, stay local
    queue = _squeue_all()
    for jobid, _ in submitted:
        comment, cpus, state = queue[jobid]
        assert state == "COMPLETED", (jobid, comment, state)
        # cpus-per-task is the rule's threads: 2 for training (as in the local run), 1 for the others
        expected_cpus = 2 if comment.startswith("rule_train_model") else 1
        assert cpus == expected_cpus, (jobid, comment, cpus)


def _job_block(log_text: str, rule: str) -> str:
    """The indented lines snakemake prints under `rule RULE:` / `localrule RULE:`."""
    m = re.search(rf"^(?:local)?rule {rule}:\n((?:    .*\n)+)", log_text, re.M)
    assert m, f"no job block of {rule}"
    return m.group(1)


def test_training_used_the_same_threads_as_the_local_run(slurm_run, base_run):
    """Training is deterministic for a fixed thread count: the SLURM job ran train_model with the
    threads of the local run (the rule's `threads: 2`; one and two threads train bit-identical
    weights, tests/test_dynamics.py)."""
    (log,) = (slurm_run["workdir"] / ".snakemake/slurm_logs/rule_train_model").rglob("*.log")
    assert "    threads: 2" in _job_block(log.read_text(), "train_model")
    (local_log,) = (base_run / ".snakemake/log").glob("*.snakemake.log")
    assert "    threads: 2" in _job_block(local_log.read_text(), "train_model")


@pytest.mark.parametrize("table", TABLES)
def test_the_tables_equal_the_local_run(slurm_run, base_run, table):
    pd.testing.assert_frame_equal(read_table(slurm_run["workdir"], table), read_table(base_run, table), check_exact=True)
