"""Agreement between attribution methods: mean Spearman rank correlation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from explain.attribution import Attribution


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two attribution maps (flattened); NaN if one is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr  # here: scipy.stats takes a second to import, and every page imports this module

    return float(spearmanr(a, b).statistic)


def agreement_matrix(attributions: Sequence[Attribution]) -> np.ndarray:
    """[M, M] mean over inputs of the rank correlation between methods' maps.

    Image maps are compared per pixel (channels summed) so methods that
    broadcast one map over channels (Grad-CAM) compare fairly.
    """
    def per_input(attr: Attribution) -> np.ndarray:
        v = np.asarray(attr.values, dtype=np.float64)
        return v.sum(axis=1) if v.ndim == 4 else v

    maps = [per_input(a) for a in attributions]
    m = len(maps)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            scores = [rank_correlation(x, y) for x, y in zip(maps[i], maps[j])]
            out[i, j] = out[j, i] = float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else np.nan
    return out
