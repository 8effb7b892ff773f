"""Progress and cancel: the one contract of every long computation.

A caller passes a `ProgressFn`; the computation calls it with (done, total) as the work
advances, through `report_progress` (nothing happens without a callback). That call is the
only place a run stops early: to cancel, the callback raises — `Cancelled` when a job's owner
pressed Cancel (the worker's callback), or Streamlit's own stop when a page's script is
interrupted (its progress bar raises) — and the computation lets the exception through, its
``with`` blocks removing hooks and killing actors on the way out. Nothing polls a flag: a
caller that has one raises `Cancelled` from its callback instead. A callback may be called
again with the same counts (a heartbeat between pieces of work: a cancel point).

`Cancelled` itself is an error class (`explain.errors`, with its exit code); it is imported
from here by the code that raises or lets it through.
"""
from __future__ import annotations

from collections.abc import Callable

from explain.errors import Cancelled

__all__ = ["Cancelled", "ProgressFn", "report_progress"]

#: progress(done, total) -> None; raises to cancel the run.
ProgressFn = Callable[[int, int], None]


def report_progress(progress: ProgressFn | None, done: int, total: int) -> None:
    """Tell ``progress`` (if any) that ``done`` of ``total`` are finished: the one cancel point.

    Raises:
        Cancelled: (or any other exception) whatever the callback raises, unchanged.
    """
    if progress is not None:
        progress(done, total)
