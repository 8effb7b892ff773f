"""Restarts in a training log: a run resumed from a checkpoint logs again from an earlier epoch or step.

A resumed run appends to the same log (Keras' ``CSVLogger(append=True)``, JSON lines, a TensorBoard
writer started again), so the (epoch, step) the rows carry goes back. Averaging the two sessions'
values at the same epoch would draw a curve neither run had; as TensorBoard does for a restart it
sees, the rows the earlier session logged from the restart's position on are dropped, and a note
says so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _positions(frame: pd.DataFrame) -> np.ndarray | None:
    """[N] each row's (epoch, step) as one dense rank (missing values carried forward); None without x."""
    keys = [c for c in ("epoch", "step") if c in frame]
    if not keys:
        return None
    table = frame[keys].ffill().fillna(-np.inf)
    order = np.lexsort([table[c].to_numpy() for c in reversed(keys)])  # sorted by epoch, then step
    sorted_rows = table.to_numpy()[order]
    new = np.r_[True, np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)]
    rank = np.empty(len(table), dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return rank


def superseded(frame: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Rows a later restart logged again, and where the restarts are.

    Returns:
        ``(drop, restarts)``: [N] bool, True for a row an earlier session logged at or after the
        (epoch, step) a later session restarted from; the row numbers where the position went back.
    """
    rank = _positions(frame)
    if rank is None or len(rank) < 2:
        return np.zeros(len(frame), dtype=bool), []
    back = np.r_[False, rank[1:] < rank[:-1]]  # [N] a restart starts at this row
    starts = np.where(back, rank, np.iinfo(np.int64).max)
    later_min = np.minimum.accumulate(starts[::-1])[::-1]  # [N] the lowest restart position from row i on
    later_min = np.r_[later_min[1:], np.iinfo(np.int64).max]  # ... strictly after row i
    return rank >= later_min, np.flatnonzero(back).tolist()


def drop_superseded(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, str | None]:
    """``frame`` without the rows a restart logged again, and one line about it (None without a restart)."""
    drop, restarts = superseded(frame)
    if not restarts:
        return frame, None
    x = "step" if "step" in frame else "epoch"
    first = frame[x].ffill().iloc[restarts[0]]
    where = f"{x} {first:g}" if pd.notna(first) else f"row {restarts[0] + 2}"
    note = (f"{source}: training restarted {len(restarts)} time(s), first at {where} (the {x} went back); "
            f"the {int(drop.sum())} rows logged before a restart from its {x} on were replaced by the "
            "resumed run's.")
    return frame.loc[~drop].reset_index(drop=True), note
