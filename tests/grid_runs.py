"""One tiny two-task grid, run once per test session (the session fixture `base_run`) and shared by
the slow test modules (test_faults, test_incremental, test_report, test_slurm, test_evaluate_task);
tests that change anything work on a copy
(`copy_run`: mtimes and .snakemake/ kept), so the base run itself stays untouched."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tests.workflow_helpers import TINY_CONFIG, job_stats, snakemake, write_config

# Two task families (so a change to one can be shown not to touch the other), one variant each, one
# shot count, no function vectors: 17 jobs, about 1-2 minutes on 2 cores.
BASE_CONFIG = {
    "models": TINY_CONFIG["models"],
    "tasks": {
        "addition": {"settings": ["setting1"], "nmax": [9], "offsets": [1], "n_examples": 6},
        "cipher": {"maxlen": [1], "offsets": [1], "n_examples": 6},
    },
    "shots": [2],
    "ablation": {"shots": [2], "n_random": 1},
    # the job sets of test_incremental / test_slurm are of the grid without function vectors
    # (their offsets would add datasets); tests/test_function_vectors.py covers the stage
    "function_vectors": {"enabled": False}, "circuit": {"enabled": False},
    "min_ld_gap": TINY_CONFIG["min_ld_gap"],
}
TABLES = ("accuracy", "predictions", "head_attribution", "ablation")

def run_base_grid(workdir: Path) -> Path:
    """Run the base grid in `workdir`. The slow modules share one finished run through the
    session fixture `base_run` (tests/conftest.py), which calls this once."""
    write_config(workdir, BASE_CONFIG)
    snakemake(workdir)
    return workdir


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder that snakemake sees as the same run: copy2 keeps every mtime (also of
    folders), and .snakemake/ keeps the metadata the params / input triggers compare against."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def read_table(workdir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(workdir / "results" / "tables" / f"{name}.parquet")


def tmp_leftovers(workdir: Path) -> list[Path]:
    """Temporary files of fi.io's atomic writes (`.NAME.XXXX.tmp`) anywhere under results/."""
    return sorted(p for p in (workdir / "results").rglob("*") if p.name.endswith(".tmp"))


# ---- what a dry run would do -------------------------------------------------------------------

_JOB = re.compile(r"^(?:local)?rule (\w+):$")


@dataclass
class Plan:
    """The jobs `snakemake -n` would run: rule -> set of first output paths; reasons by output."""

    jobs: dict[str, set[str]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def counts(self) -> dict[str, int]:
        return {rule: len(outs) for rule, outs in self.jobs.items()}

    def outputs(self) -> set[str]:
        return set().union(*self.jobs.values()) if self.jobs else set()

    def with_reason(self, fragment: str) -> set[str]:
        return {out for out, reason in self.reasons.items() if fragment in reason}


def dry_run(workdir: Path, *args: str, snakefile: Path | None = None, env: dict | None = None) -> Plan:
    """Parse the job blocks of `snakemake -n` (the rule `all` left out). Cross-checked against the
    "Job stats" table, so a format change fails loudly instead of yielding an empty plan."""
    proc = snakemake(workdir, "-n", *args, snakefile=snakefile, env=env)
    text = proc.stdout + proc.stderr
    plan = Plan(text=text)
    rule = None
    output = None
    for line in text.splitlines():
        m = _JOB.match(line)
        if m:
            rule, output = m.group(1), None
            continue
        if rule is None:
            continue
        stripped = line.strip()
        if stripped.startswith("output: "):
            output = stripped[len("output: "):].split(", ")[0]
            plan.jobs.setdefault(rule, set()).add(output)
        elif stripped.startswith("reason: ") and output is not None:
            plan.reasons[output] = stripped[len("reason: "):]
        elif not line.strip() or line.startswith("Shell command"):
            rule = None
    stats = job_stats(text)
    stats.pop("all", None)
    assert stats == plan.counts(), f"parsed {plan.counts()} but the job stats say {stats}:\n{text[-3000:]}"
    return plan


def list_changes(workdir: Path, kind: str, snakefile: Path | None = None) -> set[str]:
    """`snakemake --list-changes input|code`: the outputs snakemake sees as changed."""
    proc = snakemake(workdir, "--list-changes", kind, snakefile=snakefile)
    return {line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("results/")}
