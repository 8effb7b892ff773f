"""Synthetic training curves with known events, for the findings tests.

Every curve has realistic multiplicative noise (a few percent, more on
validation) and is written as a Keras-style table: epoch, loss, val_loss,
accuracy, val_accuracy, lr.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from explain.training.history import TrainingHistory, guess_roles


def _noisy(rng: np.random.Generator, y: np.ndarray, rel: float) -> np.ndarray:
    return y * (1.0 + rel * rng.standard_normal(len(y)))


def to_history(epochs: np.ndarray, **series: np.ndarray) -> TrainingHistory:
    frame = pd.DataFrame({"epoch": epochs.astype(float), **{k: np.asarray(v, float) for k, v in series.items()}})
    return TrainingHistory(frame, guess_roles(series), ["synthetic"], "synthetic")


def healthy(seed: int, n: int = 60, lr: float = 1e-3) -> TrainingHistory:
    """Smooth exponential decay, constant gap, constant learning rate."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    train = 0.15 + 2.1 * np.exp(-e / 10)
    val = train * 1.08 + 0.05
    acc = 1.0 - 0.9 * np.exp(-e / 8)
    return to_history(
        e, loss=_noisy(rng, train, 0.02), val_loss=_noisy(rng, val, 0.035),
        accuracy=np.clip(_noisy(rng, acc, 0.01), 0, 1), val_accuracy=np.clip(_noisy(rng, acc * 0.97, 0.02), 0, 1),
        lr=np.full(n, lr),
    )


def overfitting(seed: int, onset: int = 30, n: int = 60) -> TrainingHistory:
    """Validation loss turns up linearly at ``onset`` while training loss keeps falling."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    train = 0.05 + 2.2 * np.exp(-e / 8)
    val = 0.3 + 2.0 * np.exp(-e / 8) + 0.012 * np.maximum(0, e - onset)
    return to_history(e, loss=_noisy(rng, train, 0.02), val_loss=_noisy(rng, val, 0.03), lr=np.full(n, 1e-3))


def plateau(seed: int, start: int = 10, end: int = 30, n: int = 60) -> TrainingHistory:
    """Linear fall to 1.0 at ``start``, flat until ``end``, then a second fall."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    train = np.interp(e, [0, start, end, end + 10, n], [2.3, 1.0, 1.0, 0.3, 0.25])
    val = train + 0.1
    return to_history(e, loss=_noisy(rng, train, 0.02), val_loss=_noisy(rng, val, 0.03))


def spike(seed: int, at: int = 37, n: int = 60) -> TrainingHistory:
    """A healthy run with one training-loss spike."""
    h = healthy(seed, n)
    h.frame.loc[at, "loss"] *= 1.8
    return h


def lr_drop(seed: int, at: int = 30, n: int = 60) -> TrainingHistory:
    """Loss levels off under lr=1e-2, then drops when the rate is cut to 1e-3 at ``at``."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    level = 1.0 + 1.3 * np.exp(-e / 6)
    after = 0.45 + (level[at] - 0.45) * np.exp(-(e - at + 1) / 1.5)
    train = np.where(e < at, level, after)
    lr = np.where(e < at, 1e-2, 1e-3)
    return to_history(e, loss=_noisy(rng, train, 0.02), val_loss=_noisy(rng, train * 1.1, 0.03), lr=lr)


def diverging(seed: int, at: int = 40, n: int = 60, nan_from: int | None = None) -> TrainingHistory:
    """A healthy start, then the loss climbs steadily from ``at`` (NaN from ``nan_from``)."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    train = 0.15 + 2.1 * np.exp(-e / 10) + 0.1 * np.maximum(0, e - at)
    loss = _noisy(rng, train, 0.02)
    val = _noisy(rng, train * 1.1, 0.03)
    if nan_from is not None:
        loss[nan_from:] = np.inf  # logged NaN (see explain.training.history)
        val[nan_from:] = np.inf
    return to_history(e, loss=loss, val_loss=val)


def underfitting(seed: int, n: int = 50) -> TrainingHistory:
    """Loss barely moves; accuracy stays near chance."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    train = 2.1 + 0.2 * np.exp(-e / 15)
    acc = 0.25 + 0.05 * (1 - np.exp(-e / 15))
    return to_history(e, loss=_noisy(rng, train, 0.01), val_loss=_noisy(rng, train + 0.02, 0.02),
                      accuracy=_noisy(rng, acc, 0.02))


def oscillating(seed: int, at: int = 25, n: int = 50) -> TrainingHistory:
    """Large epoch-to-epoch swings under a high rate that calm after a decay at ``at``."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    base = 0.3 + 1.5 * np.exp(-e / 10)
    rel = np.where(e < at, 0.25, 0.02)
    loss = base * (1 + rel * rng.standard_normal(n))
    return to_history(e, loss=np.abs(loss), val_loss=np.abs(_noisy(rng, base * 1.1, 0.03)), lr=np.where(e < at, 0.5, 0.05))


def to_csv(history: TrainingHistory) -> bytes:
    """A history as the Keras CSVLogger file a user would upload."""
    return history.frame.to_csv(index=False).encode()
