"""Jobs as threads of Snakemake's process (profiles/default) against a process per job
(profiles/processes), side by side in one run.

A built-in-model job does ~0.2 s of work after 4-5 s of importing torch, transformers and
TransformerLens in a fresh process (bench/bench_dag.py). The default profile's force-use-threads
runs the `run:` rules (fi_workflow.run) in Snakemake's own process, which
imports them once. This bench builds a small grid once (a built-in model trained for a few steps,
the addition datasets), then reruns its evaluate jobs and the aggregate that reads them
(`--forcerun evaluate`), alternating the two profiles, and prints the wall times, their ratio and
whether the accuracy tables are equal.

    python -m bench.bench_jobs [--repeats 2] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from tests.conftest import REPO
from tests.workflow_helpers import snakemake, write_config

TABLE = "results/tables/accuracy.parquet"
CONFIG = {
    "models": {"fi-toy": {"builtin": True, "train": {"steps": 20, "batch_size": 8, "log_every": 10}}},
    "tasks": {"addition": {"settings": ["setting1", "setting2"], "nmax": [9], "offsets": [-2, -1, 1, 2],
                           "n_examples": 100}},
    "shots": [2, 4, 8],
}


def timed_run(workdir: Path, cores: int, *args: str) -> float:
    """Wall seconds of `snakemake TABLE` in `workdir` (the tests' runner; a failed run raises)."""
    t0 = time.perf_counter()
    snakemake(workdir, "--cores", str(cores), *args, TABLE)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench_jobs_") as tmp:
        work = Path(tmp)
        write_config(work, CONFIG)
        timed_run(work, args.cores)  # datasets, the model and a first evaluation
        n_jobs = len(list((work / "results/eval").rglob("*.parquet")))
        reference = pd.read_parquet(work / TABLE)
        times: dict[str, list[float]] = {"processes": [], "default": []}
        equal = True
        for _ in range(args.repeats):
            for profile in times:
                times[profile].append(timed_run(work, args.cores, "--forcerun", "evaluate",
                                                "--workflow-profile", str(REPO / "profiles" / profile)))
                equal &= reference.equals(pd.read_parquet(work / TABLE))
    p, d = statistics.median(times["processes"]), statistics.median(times["default"])
    print(f"{n_jobs} evaluate jobs + 1 aggregate, {args.cores} cores, median of {args.repeats} (alternating):")
    print(f"  a process per job (profiles/processes): {p:6.1f} s  {[round(t, 1) for t in times['processes']]}")
    print(f"  threads of snakemake (profiles/default): {d:6.1f} s  {[round(t, 1) for t in times['default']]}")
    print(f"  => {p / d:.1f}x faster in snakemake's process; accuracy tables equal: {equal}")


if __name__ == "__main__":
    main()
