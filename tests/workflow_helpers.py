"""Run the real Snakefile on a tiny config in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

TINY_CONFIG = {
    "models": {"fi-toy": {"builtin": True, "train": {"steps": 8, "batch_size": 8, "n_layers": 1,
                                                     "d_model": 32, "d_mlp": 64, "log_every": 2}}},
    "tasks": {"addition": {"settings": ["setting1"], "nmax": [9], "offsets": [1, -1], "n_examples": 6}},
    "shots": [2, 4],
    # an untrained model's logit-difference gaps are noise: the denominator guard (tested in
    # tests/test_ld_gap.py) would refuse its head selection
    "min_ld_gap": 0.0,
}


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, snakefile: Path | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile or REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_stats(text: str) -> dict[str, int]:
    """Rule -> count from the "job count" table snakemake prints (without the total)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                in_table = False
    return counts


def scheduled_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that `snakemake -n` would run now."""
    proc = snakemake(workdir, "-n", "--quiet", "rules", *args)
    return job_stats(proc.stdout + proc.stderr)
