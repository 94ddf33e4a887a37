"""Small file helpers: atomic writes so that a killed job never leaves a half-written output."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove_stale_temps(path: Path) -> None:
    """Drop `.{name}.XXXX.tmp` siblings left by an earlier writer of `path` that was killed (SIGKILL
    skips the cleanup below). Only one job at a time writes a given output, so any is stale."""
    stale = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp$")
    for p in path.parent.iterdir():
        if not stale.match(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux); elsewhere set
    and restored once, when this module is imported (before any job thread runs), since between the
    two calls every other thread would create files with mode 0o666 / 0o777."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path, for a whole folder (a saved checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> None:
    # json.dumps defaults (", " and ": " separators) are the paper's released format byte for byte.
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(df, path: str | os.PathLike, sources: list[str] | None = None) -> None:
    """`df` as parquet, with this process's provenance (fi.report.provenance) in the file's metadata and,
    for a table made from other parquet files (`sources`), the distinct provenance of those."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fi.report import provenance

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[provenance.KEY] = json.dumps(provenance.record(), sort_keys=True).encode()
    if sources:
        meta[provenance.SOURCES_KEY] = json.dumps(provenance.sources_of(sources), sort_keys=True).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def write_csv(df, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def progress(iterable, desc: str, total: int | None = None):
    """tqdm progress for a long loop, written to stderr (a job's log) even when it is no terminal:
    nothing for a loop done within 5 s, then at most one line every 10 s."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, mininterval=10, delay=5, disable=False)
