"""Jobs that are threads of Snakemake's process (profiles/default: force-use-threads; every `run:`
rule runs `run_job`, fi_workflow.run): each job's output goes to its own log, figures come out as in
a fresh process, and the profile without threads differs in that key only.
tests/test_workflow.py runs the tiny grid this way."""

from __future__ import annotations

import logging
import sys
import threading
from types import SimpleNamespace

import matplotlib
import pytest
import yaml

from fi.report.plots import plot_accuracy, plot_head_heatmaps
from fi_workflow import jobs
from fi_workflow.run import Job, run_job
from tests.conftest import REPO
from tests.test_plots import our_table


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """run_job sets torch's thread count of the process it runs in (this one, here): put it back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_torch_threads_are_set_once_per_process():
    """A job of its own process gets its `threads` through the environment before anything imports
    torch (a job that never imports torch does not pay for it); jobs that share the process take the
    count the first of them set, and no later job changes it."""
    import subprocess

    code = """
import sys
from types import SimpleNamespace
from fi_workflow import jobs
from fi_workflow.run import Job, run_job
seen = []
jobs.probe = lambda job: seen.append(("torch" in sys.modules, __import__("os").environ.get("OMP_NUM_THREADS")))
def job(threads):
    return Job([], [], SimpleNamespace(), SimpleNamespace(), threads, SimpleNamespace(), [])
run_job("probe", job(1))
import torch
print(seen[0], torch.get_num_threads())
jobs.shared = lambda job: seen.append(torch.get_num_threads())
run_job("shared", job(2), share_process=True)
run_job("shared", job(5), share_process=True)
print(seen[1:])
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert out.stdout.split("\n")[:2] == ["(False, '1') 1", "[2, 2]"], out.stdout + out.stderr


def test_the_processes_profile_is_the_default_one_without_threads():
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    processes = yaml.safe_load((REPO / "profiles/processes/config.yaml").read_text())
    assert default.pop("force-use-threads") is True
    assert "force-use-threads" not in processes and processes == default


def test_jobs_on_threads_write_to_their_own_logs(tmp_path, monkeypatch):
    """Two jobs at once in one process, interleaved line by line: the logging and stderr of each
    reach its log only; a failing job's log ends with its traceback and the error is raised."""
    both_started = threading.Barrier(2)
    turns = threading.Lock()

    def stage(name: str, fail: bool = False):
        both_started.wait()
        for i in range(20):
            with turns:
                logging.getLogger("fi.test").info("%s logs %d", name, i)
                print(f"{name} prints {i}", file=sys.stderr)
        if fail:
            raise RuntimeError(f"{name} broke")

    errors = {}
    # two rules whose adapters run `stage`
    monkeypatch.setattr(jobs, "alpha", lambda job: stage("alpha"), raising=False)
    monkeypatch.setattr(jobs, "beta", lambda job: stage("beta", fail=True), raising=False)

    def job(name):
        log = [str(tmp_path / "logs" / f"{name}.log")]
        try:
            run_job(name, Job(input=[], output=[], params=SimpleNamespace(), wildcards=SimpleNamespace(), threads=1,
                              resources=SimpleNamespace(), log=log))
        except RuntimeError as err:
            errors[name] = err

    threads = [threading.Thread(target=job, args=("alpha",)), threading.Thread(target=job, args=("beta",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alpha = (tmp_path / "logs/alpha.log").read_text()
    beta = (tmp_path / "logs/beta.log").read_text()
    for text, me, other in ((alpha, "alpha", "beta"), (beta, "beta", "alpha")):
        assert text.count(f"{me} logs") == 20 and text.count(f"{me} prints") == 20, text
        assert other not in text
    assert list(errors) == ["beta"]
    assert "Traceback" in beta and beta.rstrip().endswith("RuntimeError: beta broke")
    assert "Traceback" not in alpha


def test_a_figure_leaves_matplotlib_as_it_found_it(tmp_path):
    before = dict(matplotlib.rcParams)
    plot_accuracy(our_table(), str(tmp_path / "acc.png"))  # sets seaborn's theme while it draws
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


@pytest.fixture
def heads_table():
    import pandas as pd

    return pd.DataFrame([dict(model="m", task="addition", variant="v", shots=4, method=method, receiver="output",
                              positions="all", layer=layer, head=head, score=(layer - head) / 4,
                              fi_head=layer == head == 1)
                         for method in ("path", "attribution") for layer in range(2) for head in range(4)])


def test_figures_drawn_at_once_on_threads_equal_those_drawn_alone(tmp_path, heads_table):
    """Each figure, drawn while another job's thread draws a different one (which sets seaborn's
    theme), has the bytes it has when drawn alone; in either order."""
    draw = {"acc": lambda out: plot_accuracy(our_table(), out), "heads": lambda out: plot_head_heatmaps(heads_table, out)}
    alone = {}
    for name, plot in draw.items():
        plot(str(tmp_path / f"{name}_alone.png"))
        alone[name] = (tmp_path / f"{name}_alone.png").read_bytes()
    for order in (["acc", "heads"], ["heads", "acc"]):
        jobs = [threading.Thread(target=draw[name], args=(str(tmp_path / f"{name}.png"),)) for name in order]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        assert {name: (tmp_path / f"{name}.png").read_bytes() == alone[name] for name in draw} == {"acc": True, "heads": True}
