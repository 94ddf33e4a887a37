"""Where a result came from: the code (git commit and dirty flag, or the package version), the
package versions that can change a number, the machine (CPU, GPU) and the thread count.

`write_parquet` (fi.io) stores `record()` in every parquet file's metadata under the key
`fi.report.provenance`, so each table says what produced it (`read(path)` gives it back); aggregates also
keep the distinct records of their inputs (`fi.sources`). `results/provenance.json` (rule
`provenance`) gathers every table's records and the configured seeds. No timestamp: a rerun of the
same code on the same machine writes the same bytes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "transformer-lens", "snakemake", "numpy", "pandas", "pyarrow", "safetensors")
KEY = b"fi.report.provenance"
SOURCES_KEY = b"fi.sources"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The git commit of the checkout holding the `fi` package and whether it has uncommitted
    changes to tracked files; without git (an installed package), the package version."""
    root = Path(__file__).resolve().parents[2]
    out = {"fi_version": _version("fi")}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        out.update(git_commit=commit, git_dirty=bool(status.strip()))
    except (OSError, subprocess.SubprocessError):
        out.update(git_commit=None, git_dirty=None)
    return out


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _static() -> dict:
    return {**code_version(), "packages": {p: _version(p) for p in PACKAGES}, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}


def record() -> dict:
    """This process's provenance now (threads and GPU as torch sees them, if torch is loaded)."""
    import sys

    out = dict(_static())
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def read(path: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """(the record of the process that wrote a parquet file, the records of its inputs)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    own = json.loads(meta[KEY]) if KEY in meta else None
    return own, json.loads(meta[SOURCES_KEY]) if SOURCES_KEY in meta else []


def distinct(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def sources_of(paths: list[str]) -> list[dict]:
    """The distinct provenance records of parquet files and of what they were made from."""
    records = []
    for p in paths:
        own, sources = read(p)
        records += ([own] if own else []) + sources
    return distinct(records)


def summary_line(records: list[dict]) -> str:
    """One line for a caption or a report's front page."""
    if not records:
        return "provenance: unknown"
    commits = sorted({f"{(r.get('git_commit') or r.get('fi_version') or '?')[:10]}"
                      + ("+dirty" if r.get("git_dirty") else "") for r in records})
    cpus = sorted({r.get("cpu") or "?" for r in records})
    gpus = sorted({r["gpu"] for r in records if r.get("gpu")})
    threads = sorted({r["torch_threads"] for r in records if r.get("torch_threads")})
    pk = records[0]["packages"]
    return (f"fi {', '.join(commits)}; torch {pk.get('torch')}, transformers {pk.get('transformers')}, "
            f"transformer-lens {pk.get('transformer-lens')}, snakemake {pk.get('snakemake')}; "
            f"CPU {', '.join(cpus)}" + (f"; GPU {', '.join(gpus)}" if gpus else "")
            + (f"; torch threads {', '.join(map(str, threads))}" if threads else ""))
