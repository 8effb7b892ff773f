"""Automatic diagnosis of training curves: overfitting, plateaus, divergence, ...

`diagnose` reads the roles of a `TrainingHistory` (train/val loss, train/val
metric, learning rate) per epoch and returns `Finding`s of the kinds
:data:`KINDS`. Every test compares a change against the curve's own scale: a
robust noise estimate (median absolute deviation of the residuals from a
running median) and the curve's range, on a centred smoothing (running median,
then running mean) so single noisy epochs decide nothing. A clean, noisy but
healthy curve yields only ``best_epoch``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from explain.finding import Finding
from explain.training.history import TrainingHistory

KINDS: tuple[str, ...] = (
    "overfitting", "best_epoch", "plateau", "divergence", "instability", "underfitting", "lr_effect",
)
#: Diagnosis runs on at most this many points (longer step logs are binned).
MAX_POINTS = 600
_HIGHER_IS_WORSE = ("loss", "err", "mae", "mse", "rmse", "perplexity", "ppl", "nll")


@dataclass
class Curve:
    """One finite series prepared for diagnosis.

    Attributes:
        x: [N] epochs (or steps).
        y: [N] values.
        smooth: [N] centred running median + running mean of ``y``.
        noise: robust standard deviation of ``y`` around its running median.
        rel_noise: the same, relative to the running median's level.
    """

    x: np.ndarray
    y: np.ndarray
    smooth: np.ndarray
    noise: float
    rel_noise: float

    @property
    def span(self) -> float:
        return float(np.max(self.smooth) - np.min(self.smooth)) if len(self.smooth) else 0.0


def _padded(y: np.ndarray, half: int) -> np.ndarray:
    """``y`` extended by ``half`` points each side by odd reflection (keeps a linear trend at the ends)."""
    half = min(half, len(y) - 1)
    if half <= 0:
        return y
    left = 2 * y[0] - y[half:0:-1]
    right = 2 * y[-1] - y[-2 : -half - 2 : -1]
    return np.concatenate([left, y, right])


def _rolling(y: np.ndarray, window: int, how: str) -> np.ndarray:
    half = window // 2
    padded = _padded(np.asarray(y, dtype=np.float64), half)
    pad = (len(padded) - len(y)) // 2
    roll = pd.Series(padded).rolling(window, center=True, min_periods=1)
    out = (roll.median() if how == "median" else roll.mean()).to_numpy()
    return out[pad : pad + len(y)]


def _running_median(y: np.ndarray, window: int) -> np.ndarray:
    return _rolling(y, window, "median")


def _running_mean(y: np.ndarray, window: int) -> np.ndarray:
    return _rolling(y, window, "mean")


def _mad_sigma(r: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation)."""
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _noise(y: np.ndarray, relative: bool = False) -> float:
    """White-noise level of ``y`` from its second differences (blind to linear trends).

    For noise of standard deviation s, y[i-1] - 2 y[i] + y[i+1] has standard
    deviation sqrt(6) s. ``relative`` divides by the local level first.
    """
    if len(y) < 3:
        return 0.0
    d2 = y[:-2] - 2 * y[1:-1] + y[2:]
    if relative:
        d2 = d2 / np.maximum(np.abs(y[1:-1]), 1e-12)
    return _mad_sigma(d2) / np.sqrt(6.0)


def prepare_curve(x: np.ndarray, y: np.ndarray) -> Curve:
    """Smooth ``y`` and measure its noise (``y`` must be finite)."""
    n = len(y)
    med = _running_median(y, 5) if n >= 5 else y.copy()
    window = int(max(3, min(15, n // 12)) | 1)
    smooth = _running_mean(med, window) if n >= 5 else y.copy()
    return Curve(x, y, smooth, _noise(y), _noise(y, relative=True))


def _series(frame: pd.DataFrame, column: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    if column is None or column not in frame:
        return None
    s = frame[column].dropna()
    if s.empty:
        return None
    return s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)


def _bin(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """Average consecutive rows so at most ``max_points`` remain (inf survives)."""
    if len(frame) <= max_points:
        return frame
    groups = np.arange(len(frame)) * max_points // len(frame)
    binned = frame.groupby(groups).mean()
    binned.index = frame.index.to_series().groupby(groups).max().to_numpy()
    return binned


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _x_label(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else _fmt(x)


# -- individual checks ---------------------------------------------------------
def _check_nonfinite(name: str, x: np.ndarray, y: np.ndarray, unit: str) -> tuple[list[Finding], int]:
    """Non-finite losses: divergence when they last to the end, else instability.

    Returns:
        the findings and how many leading points are usable (before divergence).
    """
    bad = ~np.isfinite(y)
    if not bad.any():
        return [], len(y)
    first = int(np.argmax(bad))
    if bad[first:].all():
        msg = f"{name} became NaN/inf at {unit} {_x_label(x[first])} and never recovered: training diverged."
        return [Finding("divergence", "error", msg, [float(x[first])],
                        {"series": name, "first_nonfinite": float(x[first]), "x": unit})], first
    where = [float(v) for v in x[bad]]
    msg = f"{name} was NaN/inf at {unit}(s) {', '.join(_x_label(v) for v in where[:6])} before recovering."
    return [Finding("instability", "error", msg, where, {"series": name, "nonfinite_at": where, "x": unit})], len(y)


def _check_spikes(name: str, c: Curve, unit: str) -> list[Finding]:
    """Isolated upward spikes: far above the running median relative to the noise."""
    if len(c.y) < 7:
        return []
    med = _running_median(c.y, 7)
    level = np.maximum(np.abs(med), 1e-12)
    rel = (c.y - med) / level
    sigma = c.rel_noise
    threshold = max(8.0 * sigma, 0.15)
    spikes = np.flatnonzero(rel > threshold)
    if len(spikes) == 0:
        return []
    where = [float(c.x[i]) for i in spikes]
    worst = float(rel[spikes].max())
    msg = (f"{name} spiked at {unit}(s) {', '.join(_x_label(v) for v in where[:6])} "
           f"(up to {worst:.0%} above its running level, then back): "
           f"unstable updates or a noisy evaluation.")
    return [Finding("instability", "warning", msg, where,
                    {"series": name, "spikes": where, "max_relative_jump": worst, "threshold": threshold, "x": unit})]


def _check_divergence(name: str, c: Curve, unit: str) -> list[Finding]:
    """A finite loss that climbs back up and stays up."""
    n = len(c.y)
    if n < 6:
        return []
    m = int(np.argmin(c.smooth))
    tail = max(2, n // 10)
    if m >= n - tail:
        return []
    low, start, end = c.smooth[m], c.smooth[0], float(np.median(c.y[-tail:]))
    rise = end - low
    needed = max(0.5 * (start - low), 6.0 * c.noise, 0.1 * abs(low))
    if rise <= needed or not np.all(c.y[-tail:] > low + rise / 2):
        return []
    near = low + max(3.0 * c.noise, 0.02 * rise)
    onset = m + int(np.flatnonzero(c.smooth[m:] <= near).max())  # the last time it was near its best
    msg = (f"{name} climbed from {_fmt(low)} back to {_fmt(end)} after {unit} {_x_label(c.x[m])}: "
           f"training diverged (learning rate too high?).")
    return [Finding("divergence", "error", msg, [float(c.x[onset])],
                    {"series": name, "minimum": float(low), "final": end, "minimum_at": float(c.x[m]), "x": unit})]


def _check_overfitting(train: Curve, val: Curve, unit: str) -> list[Finding]:
    """Validation loss turns up while training loss keeps falling."""
    n = len(val.y)
    if n < 6:
        return []
    b = int(np.argmin(val.smooth))
    after = n - 1 - b
    if after < 2:
        return []
    tail = max(2, after // 3)
    v_end = float(np.mean(val.smooth[-tail:]))
    rise = v_end - float(val.smooth[b])
    local_noise = _noise(val.y[b:]) if after >= 4 else val.noise
    needed = max(3.0 * max(local_noise, val.noise), 0.03 * val.span, 0.02 * abs(float(val.smooth[b])))
    if rise <= needed:
        return []
    t_at = np.interp(val.x[b], train.x, train.smooth)
    t_end = float(np.mean(train.smooth[-tail:])) if len(train.smooth) >= tail else float(train.smooth[-1])
    if not t_end < t_at - max(2.0 * train.noise, 0.01 * train.span):
        return []
    gap_start = float(val.smooth[b] - t_at)
    gap_end = float(v_end - t_end)
    if gap_end <= gap_start:
        return []
    onset = float(val.x[b])
    msg = (f"Overfitting from {unit} {_x_label(onset)}: validation loss rose from {_fmt(val.smooth[b])} "
           f"to {_fmt(v_end)} while training loss kept falling ({_fmt(t_at)} → {_fmt(t_end)}); "
           f"the gap grew from {_fmt(gap_start)} to {_fmt(gap_end)}.")
    return [Finding("overfitting", "warning", msg, [onset], {
        "onset": onset, "val_at_onset": float(val.smooth[b]), "val_final": v_end,
        "train_at_onset": float(t_at), "train_final": t_end, "gap_at_onset": gap_start, "gap_final": gap_end,
        "threshold": needed, "x": unit,
    })]


def _check_best(name: str, x: np.ndarray, y: np.ndarray, higher_better: bool, unit: str,
                patience: int) -> list[Finding]:
    """Best epoch and where early stopping with ``patience`` would have stopped."""
    finite = np.isfinite(y)
    if not finite.any():
        return []
    score = np.where(finite, -y if higher_better else y, np.inf)
    best = int(np.argmin(score))
    stop, best_so_far, best_i = None, np.inf, 0
    for i, s in enumerate(score):
        if s < best_so_far:
            best_so_far, best_i = s, i
        elif i - best_i >= patience:
            stop = i
            break
    word = "highest" if higher_better else "lowest"
    msg = f"Best {name}: {word} value {_fmt(y[best])} at {unit} {_x_label(x[best])} of {_x_label(x[-1])}."
    if stop is not None:
        msg += f" Early stopping with patience {patience} would have stopped at {unit} {_x_label(x[stop])}."
    evidence = {"series": name, "best": float(x[best]), "best_value": float(y[best]), "patience": patience,
                "early_stop": None if stop is None else float(x[stop]), "last": float(x[-1]), "x": unit}
    return [Finding("best_epoch", "info", msg, [float(x[best])], evidence)]


def _check_plateau(name: str, c: Curve, unit: str) -> list[Finding]:
    """A long flat stretch after which the loss falls substantially again.

    A point is flat when the smoothed curve's slope there is below 1% of the
    curve's range per epoch (or its noise level); a flat stretch that lasts to
    the end is convergence, not a plateau.
    """
    n = len(c.smooth)
    if n < 10 or c.span <= 0:
        return []
    min_len = max(5, n // 10)
    h = 2
    padded = _padded(c.smooth, h)
    slope = (padded[2 * h :] - padded[: -2 * h]) / (2 * h)  # [N] per point
    tol = max(0.01 * c.span, 0.5 * c.noise / h)
    flat = np.abs(slope) < tol
    found: list[Finding] = []
    i = 0
    while i < n:
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and flat[j + 1]:
            j += 1
        if j - i + 1 >= min_len and j < n - 1:
            i0, j0 = i, j
            level = float(np.median(c.y[i : j + 1]))
            med = _running_median(c.y, 5)
            near = max(0.03 * c.span, 2.0 * c.noise)
            while i0 > 0 and abs(med[i0 - 1] - level) < near:  # the slope test blurs the corners
                i0 -= 1
            while i0 < j and abs(med[i0] - level) >= near:
                i0 += 1
            while j0 + 1 < n - 1 and abs(med[j0 + 1] - level) < near:
                j0 += 1
            while j0 > i0 and abs(med[j0] - level) >= near:
                j0 -= 1
            later = float(np.min(c.smooth[j0 + 1 :]))
            drop = level - later
            xs = c.x[i0 : j0 + 1]
            fit_slope = np.polyfit(xs, c.y[i0 : j0 + 1], 1)[0] if len(xs) >= 3 else 0.0
            change = abs(float(fit_slope * (xs[-1] - xs[0])))  # a slow steady decline is no plateau
            if change <= 0.05 * c.span and drop > max(0.15 * c.span, 6.0 * c.noise):
                start, end = float(c.x[i0]), float(c.x[j0])
                msg = (f"{name} plateaued at about {_fmt(level)} from {unit} {_x_label(start)} to "
                       f"{_x_label(end)}, then fell again to {_fmt(later)}.")
                found.append(Finding("plateau", "warning", msg, [start, end], {
                    "series": name, "start": start, "end": end, "level": level, "later_minimum": later,
                    "slope_tolerance": tol, "x": unit}))
        i = j + 1
    return found


def _check_underfitting(train: Curve | None, metric: Curve | None, metric_name: str | None,
                        unit: str) -> list[Finding]:
    out: list[Finding] = []
    if train is not None and len(train.y) >= 5:
        start, end = float(train.smooth[0]), float(np.min(train.smooth[-max(2, len(train.y) // 10):]))
        if abs(start) > 1e-12 and (start - end) / abs(start) < 0.2:
            msg = (f"Training loss barely fell ({_fmt(start)} → {_fmt(end)}, "
                   f"{(start - end) / abs(start):.0%}): the model underfits (too small, too little "
                   f"training, or a learning rate too low).")
            out.append(Finding("underfitting", "warning", msg, [float(train.x[-1])],
                               {"start": start, "end": end, "relative_drop": (start - end) / abs(start), "x": unit}))
    if not out and metric is not None and metric_name and len(metric.y) >= 3:
        bounded = np.all((metric.y >= 0) & (metric.y <= 1))
        if bounded and not any(k in metric_name.lower() for k in _HIGHER_IS_WORSE):
            end = float(np.max(metric.smooth[-max(2, len(metric.y) // 10):]))
            if end < 0.6:
                msg = f"Training {metric_name} ends at only {end:.2f}: the model does not fit its training data."
                out.append(Finding("underfitting", "warning", msg, [float(metric.x[-1])],
                                   {"metric": metric_name, "final": end, "threshold": 0.6, "x": unit}))
    return out


def _check_lr(loss_name: str, loss: Curve, lr_x: np.ndarray, lr: np.ndarray, unit: str) -> list[Finding]:
    """Loss drops at learning-rate decays; oscillation while the rate was high."""
    ok = np.isfinite(lr) & (lr > 0)
    lr_x, lr = lr_x[ok], lr[ok]
    if len(lr) < 3 or len(loss.y) < 6:
        return []
    decays = [i for i in range(1, len(lr)) if lr[i] <= 0.7 * lr[i - 1]]
    out: list[Finding] = []
    for i in decays:
        at = float(lr_x[i])
        k = int(np.searchsorted(loss.x, at))  # first loss point with the new rate
        before = loss.y[max(0, k - 3) : k]
        after = loss.y[k + 1 : k + 4] if k + 1 < len(loss.y) else loss.y[k:]
        if len(before) < 2 or len(after) < 1:
            continue
        level_before = float(np.median(before))
        earlier = loss.y[max(0, k - 6) : max(0, k - 3)]
        expected = level_before  # where the trend would have gone without the decay
        if len(earlier) >= 2:
            level_earlier = float(np.median(earlier))
            if level_before > 0 and level_earlier > 0:  # losses decay roughly geometrically
                expected = level_before * min(level_before / level_earlier, 1.0) ** (2.5 / 3)
            else:
                expected = level_before + min(level_before - level_earlier, 0.0) * 2.5 / 3
        level_after = float(np.median(after))
        drop = expected - level_after
        if drop > max(4.0 * loss.noise, 0.08 * abs(level_before)):
            msg = (f"{loss_name} dropped {drop / abs(level_before):.0%} right after the learning rate fell "
                   f"from {lr[i - 1]:.3g} to {lr[i]:.3g} at {unit} {_x_label(at)}.")
            out.append(Finding("lr_effect", "info", msg, [at], {
                "effect": "drop", "lr_before": float(lr[i - 1]), "lr_after": float(lr[i]),
                "loss_before": level_before, "loss_after": level_after, "x": unit}))
    if decays:
        split = float(lr_x[decays[0]])
        pre, post = loss.x < split, loss.x >= split
        if pre.sum() >= 8 and post.sum() >= 6:
            rough = lambda m: _noise(loss.y[m], relative=True)
            r_pre, r_post = rough(pre), rough(post)
            if r_pre > 0.08 and r_pre > 3.0 * r_post:
                msg = (f"{loss_name} oscillated by about ±{r_pre:.0%} per {unit} until the learning rate "
                       f"was lowered at {unit} {_x_label(split)}, then settled (±{r_post:.0%}): "
                       f"the initial rate was too high.")
                out.append(Finding("lr_effect", "warning", msg, [split], {
                    "effect": "oscillation", "roughness_before": r_pre, "roughness_after": r_post, "x": unit}))
    return out


# -- entry point ------------------------------------------------------------------
def diagnose(history: TrainingHistory, patience: int = 5) -> list[Finding]:
    """Findings for one history, using its ``roles``.

    Args:
        history: the curves; ``roles`` say which column is which.
        patience: the early-stopping patience reported with ``best_epoch``.

    Returns:
        findings ordered by :data:`KINDS`, then by epoch.
    """
    unit = history.default_x
    frame = _bin(history.by_epoch(), MAX_POINTS)
    roles = history.roles
    findings: list[Finding] = []
    curves: dict[str, Curve] = {}
    for role in ("train_loss", "val_loss"):
        data = _series(frame, roles.get(role))
        if data is None:
            continue
        x, y = data
        label = "Training loss" if role == "train_loss" else "Validation loss"
        found, usable = _check_nonfinite(label, x, y, unit)
        if any(f.kind == "divergence" for f in findings):  # one divergence, seen first in either loss
            found = [f for f in found if f.kind != "divergence"]
        findings += found
        finite = np.isfinite(y[:usable])
        if finite.sum() >= 2:
            curves[role] = prepare_curve(x[:usable][finite], y[:usable][finite])
    diverged = any(f.kind == "divergence" for f in findings)
    train, val = curves.get("train_loss"), curves.get("val_loss")
    for role, label in (("train_loss", "Training loss"), ("val_loss", "Validation loss")):
        if role in curves:
            findings += _check_spikes(label, curves[role], unit)
    if train is not None and not diverged:
        findings += _check_divergence("Training loss", train, unit)
        diverged = any(f.kind == "divergence" for f in findings)
    if train is not None and val is not None and not diverged:
        findings += _check_overfitting(train, val, unit)

    best_source = None
    if roles.get("val_loss") and _series(frame, roles["val_loss"]) is not None:
        best_source = ("validation loss", roles["val_loss"], False)
    elif roles.get("val_metric") and _series(frame, roles["val_metric"]) is not None:
        col = roles["val_metric"]
        best_source = (f"validation {col}", col, not any(k in col.lower() for k in _HIGHER_IS_WORSE))
    elif roles.get("train_loss") and _series(frame, roles["train_loss"]) is not None:
        best_source = ("training loss", roles["train_loss"], False)
    if best_source is not None:
        name, col, higher = best_source
        x, y = _series(frame, col)
        findings += _check_best(name, x, y, higher, unit, patience)

    main = train or val
    if main is not None and not diverged:
        findings += _check_plateau("Training loss" if train is not None else "Validation loss", main, unit)
    if not diverged:
        metric = _series(frame, roles.get("train_metric"))
        metric_curve = prepare_curve(*_finite(metric)) if metric is not None and np.isfinite(metric[1]).sum() >= 3 else None
        findings += _check_underfitting(train, metric_curve, roles.get("train_metric"), unit)
    lr = _series(frame, roles.get("lr"))
    if lr is not None and main is not None:
        findings += _check_lr("Training loss" if train is not None else "Validation loss", main, *lr, unit)
    findings.sort(key=lambda f: (KINDS.index(f.kind) if f.kind in KINDS else len(KINDS), f.epochs[:1]))
    return findings


def _finite(data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, y = data
    ok = np.isfinite(y)
    return x[ok], y[ok]
