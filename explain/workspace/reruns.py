"""What every kind's re-run shares, for the job modules that build and save one (each kind's re-run is
named in `explain.workspace.run_kinds`):

    record = as_rerun(record, job_params)     # the run of a job with ``rerun_of``: names the run it repeats
    x = max_difference(saved, fresh)          # the largest |difference| of two saved arrays, NaN if not alike
    x = largest([x, y])                       # the largest of several, NaN if any is
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from explain.workspace.runs import RunRecord


def as_rerun(record: RunRecord, params: dict[str, Any]) -> RunRecord:
    """``record`` as the run of a re-run job (``params["rerun_of"]``: the run it repeats): its title says
    so and its summary names it (``summary["rerun_of"]``); any other job's record as it is."""
    rerun_of = params.get("rerun_of")
    if not rerun_of:
        return record
    return replace(record, title=f"Re-run of {rerun_of}: {record.title}",
                   summary={**record.summary, "rerun_of": rerun_of})


def max_difference(saved: Any, fresh: Any) -> float:
    """The largest absolute difference of two arrays (in float64); NaN at the same places counts as equal
    (a correlation of a constant map), NaN at one side only or arrays of other shapes give NaN."""
    a, b = np.asarray(saved, dtype=np.float64), np.asarray(fresh, dtype=np.float64)
    if a.shape != b.shape:
        return float("nan")
    both = np.isnan(a) & np.isnan(b)
    diff = np.abs(np.where(both, 0.0, a) - np.where(both, 0.0, b))  # NaN where one side only is NaN
    return float(np.max(diff, initial=0.0)) if not np.isnan(diff).any() else float("nan")


def largest(differences: Any) -> float:
    """The largest of ``differences``; NaN when any is NaN (something not comparable), 0 when there are none."""
    values = [float(d) for d in differences]
    return float("nan") if any(np.isnan(values)) else max(values, default=0.0)


def relative(difference: float, saved: Any) -> float:
    """``difference`` relative to the saved array's largest absolute (finite) value (1 when it is all 0)."""
    finite = np.abs(np.asarray(saved, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return difference / (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
