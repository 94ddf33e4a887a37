"""Matplotlib's process-wide state, for jobs that share a process.

pyplot's figures and matplotlib's rcParams (which `sns.set_theme` changes) belong to the process.
Jobs that are threads of one process (every `run:` rule under profiles/default, fi_workflow.run)
draw one figure at a time, each from the same defaults, so a figure looks as it would drawn in a
fresh process, whatever the jobs around it drew before.
"""

from __future__ import annotations

import contextlib
import threading

import matplotlib

matplotlib.use("Agg")  # files only; never a display

_PYPLOT = threading.RLock()


@contextlib.contextmanager
def one_figure_at_a_time():
    """Hold pyplot for one figure and restore rcParams afterwards; also a decorator."""
    with _PYPLOT, matplotlib.rc_context():
        yield
