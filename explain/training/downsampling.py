"""Averaging long training logs down to what curves and findings need.

A step-level log of a long run has millions of rows (a 200 MB CSV holds about
5.5 M). Findings already work on at most a few thousand points per curve and a
chart cannot show more than its width, but carrying every row costs memory,
caching and, above all, drawing: plotly needs minutes and hundreds of MB of
JSON for a few million points. So a history keeps at most :data:`MAX_ROWS`
rows (consecutive rows averaged, never across an epoch), and each drawn curve
at most :data:`MAX_DRAWN_POINTS` points. Both say so where they average.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

#: rows a `TrainingHistory` keeps; longer logs are averaged down (documented in README).
MAX_ROWS = 100_000
#: points per drawn curve.
MAX_DRAWN_POINTS = 4_000

_X = ("epoch", "step", "wall_time")


def downsample_rows(frame: pd.DataFrame, max_rows: int, source: str) -> tuple[pd.DataFrame, str | None]:
    """Average runs of consecutive rows so that about ``max_rows`` remain.

    A run never spans two epochs when the log has few enough epochs, so a
    value logged once per epoch (validation) keeps its value and per-epoch
    averages (what findings use) move only as far as the shorter last run of
    an epoch weighs differently. Series are averaged over their logged values;
    a run holding a non-finite value stays non-finite (+inf); x columns take
    the run's last value (the end of the run).

    Args:
        frame: a history's frame (x columns, then series), rows in logged order.
        max_rows: the most rows to keep (at least 1).
        source: the file, for the note.

    Returns:
        the frame (unchanged when short enough) and None, or the averaged frame
        and a one-line note saying what was averaged.
    """
    n = len(frame)
    if n <= max_rows:
        return frame, None
    size = math.ceil(n / max_rows)
    starts = np.zeros(n, dtype=bool)
    starts[::size] = True
    by_epoch = "epoch" in frame and frame["epoch"].nunique() <= max_rows // 2
    if by_epoch:  # a run also ends where an epoch ends
        epoch = frame["epoch"].ffill().fillna(-1.0).to_numpy()
        starts[1:] |= epoch[1:] != epoch[:-1]
    first = np.flatnonzero(starts)  # [R] the first row of each run
    last = np.append(first[1:], n) - 1
    series = [c for c in frame.columns if c not in _X]
    values = frame[series].to_numpy(dtype=float)  # [N, S]
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), first, axis=0)
    counts = np.add.reduceat(finite, first, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, np.nan)
    means[np.add.reduceat(np.isinf(values), first, axis=0) > 0] = np.inf  # logged non-finite stays so
    out = pd.DataFrame({x: frame[x].ffill().to_numpy()[last] for x in _X if x in frame})
    for j, column in enumerate(series):
        out[column] = means[:, j]
    note = (f"{source}: {n:,} rows averaged into {len(out):,} points (runs of up to {size} consecutive rows"
            f"{', never across an epoch' if by_epoch else ''}) to keep the page responsive; "
            "curves and findings use the averages.")
    return out, note


def downsample_points(xs: np.ndarray, ys: np.ndarray, max_points: int = MAX_DRAWN_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of one curve for drawing: means of consecutive points.

    Args:
        xs: [N] sorted x values.
        ys: [N] values; a non-finite value makes its bin non-finite (drawn as a gap).

    Returns:
        (xs, ys) of at most ``max_points`` points; each bin is placed at its last x.
    """
    n = len(xs)
    if n <= max_points:
        return xs, ys
    size = math.ceil(n / max_points)
    pad = (-n) % size
    y = np.concatenate([np.asarray(ys, dtype=float), np.full(pad, np.nan)]).reshape(-1, size)
    bad = np.isinf(y).any(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin with nothing logged stays NaN
        means = np.nanmean(np.where(np.isinf(y), np.nan, y), axis=1)
    means[bad] = np.inf
    last = np.minimum(np.arange(1, len(y) + 1) * size, n) - 1
    return np.asarray(xs, dtype=float)[last], means
