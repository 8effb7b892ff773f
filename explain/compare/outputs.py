"""Outputs of two versions on the same inputs: agreement, flipped inputs, probability shifts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OutputChange:
    """How B's predictions differ from A's on the same N inputs.

    Attributes:
        probs_a, probs_b: [N, K] class probabilities of A and B.
        predicted_a, predicted_b: [N] each version's predicted class.
        shift: [N] per input, the largest change of any class's probability, ``max_k |b - a|``.
    """

    probs_a: np.ndarray
    probs_b: np.ndarray

    def __post_init__(self) -> None:
        self.probs_a = np.asarray(self.probs_a, dtype=np.float64)
        self.probs_b = np.asarray(self.probs_b, dtype=np.float64)
        if self.probs_a.shape != self.probs_b.shape or self.probs_a.ndim != 2:
            raise ValueError(f"probabilities of shapes {self.probs_a.shape} and {self.probs_b.shape} do not compare")

    @property
    def predicted_a(self) -> np.ndarray:
        return self.probs_a.argmax(axis=1)

    @property
    def predicted_b(self) -> np.ndarray:
        return self.probs_b.argmax(axis=1)

    @property
    def shift(self) -> np.ndarray:
        return np.abs(self.probs_b - self.probs_a).max(axis=1)  # [N]

    @property
    def agreement(self) -> float:
        """Share of inputs both versions give the same class (1.0 for no inputs)."""
        return float((self.predicted_a == self.predicted_b).mean()) if len(self.probs_a) else 1.0

    @property
    def flipped(self) -> list[int]:
        """Indices of the inputs whose predicted class changed, in input order."""
        return [int(i) for i in np.flatnonzero(self.predicted_a != self.predicted_b)]

    @property
    def max_probability_change(self) -> float:
        return float(self.shift.max()) if len(self.probs_a) else 0.0

    def order(self) -> list[int]:
        """Every input, flipped ones first, then by shift, largest first (ties: input order)."""
        flipped = self.predicted_a != self.predicted_b
        return [int(i) for i in np.lexsort((np.arange(len(flipped)), -self.shift, ~flipped))]


def compare_outputs(probs_a: np.ndarray, probs_b: np.ndarray) -> OutputChange:
    """The `OutputChange` of A's [N, K] probabilities to B's."""
    return OutputChange(probs_a, probs_b)
