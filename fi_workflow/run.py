"""Running a rule's job: `run: run_job(rule, Job(input, output, params, wildcards, threads,
resources, log))` in a rule, `run_script(snakemake)` in the script of a `script:` rule. Both find
the rule's adapter in fi_workflow.jobs and run it with the job's log as its stderr and logging
target.

Under the workflow profile's force-use-threads (profiles/default) a `run:` job is a thread of
Snakemake's own process, one thread a job, so torch, transformers and TransformerLens are imported
once per run, not once per job (4-5 s of a built-in-model job's 5-6 s, bench/bench_dag.py), and
jobs of one model share its load (fi.engine.models.MODEL_CACHE). Everything that makes that safe
for the workflow lives here: each job's log is the target of its thread only, the first imports of
torch and TransformerLens happen under a lock, and torch's thread count is set once per process
(common.smk's run_job says whether jobs share the process; a job of its own process imports only
what its stage needs). Without
force-use-threads (profiles/processes, or a cluster's jobs) Snakemake starts a process per job, as
for any `run:` rule.

Any error is logged with its traceback (so the log names it) and re-raised, which makes Snakemake
fail the job and delete its outputs; the stages write atomically, so nothing half-written is left
in place."""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("fi")


class Job(NamedTuple):
    """What a rule's job gives its adapter: Snakemake's own objects, as a `run:` block names them
    (input, output, params, wildcards and log are Snakemake's named lists)."""

    input: Any
    output: Any
    params: Any
    wildcards: Any
    threads: int
    resources: Any
    log: Any


def run_job(rule: str, job: Job, share_process: bool = False) -> None:
    """Run the rule's adapter (fi_workflow.jobs.<rule>) on the job, with the job's log.
    `share_process`: the job is one of several threads of this process (Snakemake's
    `workflow.use_threads`), so the model libraries are imported first, by one job at a time."""
    from fi_workflow import jobs

    adapter = getattr(jobs, rule, None)
    if adapter is None:
        raise KeyError(f"no adapter for rule {rule!r} in fi_workflow/jobs.py")
    with job_log(job.log[0] if job.log else None):
        try:
            if share_process:
                _import_model_libraries(job.threads)
            else:
                _own_process_threads(job.threads)
            adapter(job)
        except BaseException as err:
            log.exception("%s failed: %s: %s", rule, type(err).__name__, err)
            raise


def run_script(snakemake) -> None:
    """The body of a `script:` rule's script: the `snakemake` object Snakemake gives it, as a Job."""
    sm = snakemake
    run_job(sm.rule, Job(sm.input, sm.output, sm.params, sm.wildcards, sm.threads, sm.resources, sm.log))


_IMPORTS = threading.Lock()
_imported = False

# torch's intra-op thread count belongs to the process, not to a job: it is set here, once per
# process, and no stage changes it. A job of its own process sets it to the job's `threads` before
# torch is imported (through the environment, so a job that never imports torch pays nothing);
# jobs that are threads of one process share the count the first of them set (every `run:` rule
# asks for one thread, workflow/rules/*.smk), so no job changes it under another's feet.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _import_model_libraries(threads: int) -> None:
    """Importing torch or transformers' lazy modules from two threads at once is not safe: the
    first job imports them, alone, and sets the process's torch threads to its own."""
    global _imported
    if _imported:
        return
    with _IMPORTS:
        if not _imported:
            import pandas  # noqa: F401
            import torch
            import transformer_lens.model_bridge  # noqa: F401

            torch.set_num_threads(max(1, int(threads)))
            _imported = True


def _own_process_threads(threads: int) -> None:
    threads = str(max(1, int(threads)))
    if "torch" in sys.modules:  # imported already (a `script:` job's Snakemake preamble may)
        sys.modules["torch"].set_num_threads(int(threads))
    else:
        for name in _THREAD_VARIABLES:
            os.environ[name] = threads


@contextmanager
def job_log(path: str | None):
    """The job's log file as the stderr and logging target of this thread for the duration of the
    job (no log: the thread writes where sys.stderr wrote before)."""
    stream = None
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "w", buffering=1)
    split = _JobStderr.install()
    split.local.stream = stream
    try:
        yield
    finally:
        split.local.stream = None
        if stream is not None:
            stream.close()


class _JobStderr:
    """sys.stderr, split by thread: a thread that runs a job (`local.stream` set) writes to that
    job's log; any other thread to the stream sys.stderr was before. Installed once per process,
    with one root-logger handler that writes the job threads' records (fi's from INFO up) there."""

    _lock = threading.Lock()

    def __init__(self, original):
        self.original = original
        self.local = threading.local()

    def _target(self):
        return getattr(self.local, "stream", None) or self.original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def __getattr__(self, name):  # encoding, fileno, ...: the original stream's
        return getattr(self.original, name)

    @classmethod
    def install(cls) -> _JobStderr:
        with cls._lock:
            if not isinstance(sys.stderr, cls):
                split = cls(sys.stderr)
                handler = logging.StreamHandler(split)
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                # only records logged on a job's thread: Snakemake's own go where they went before
                handler.addFilter(lambda record: getattr(split.local, "stream", None) is not None)
                logging.getLogger().addHandler(handler)
                log.setLevel(logging.INFO)
                sys.stderr = split
            return sys.stderr
