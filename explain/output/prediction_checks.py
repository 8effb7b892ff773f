"""Checks on a model's predictions that point at wrong inputs rather than at the model.

`one_class_warning`: every input predicted as one class at about 100 % is the usual sign
of inputs that were not preprocessed as the model was trained (no mean / std, the wrong
size or range). The Output and Overview pages and the CLI show its sentence.
"""
from __future__ import annotations

import numpy as np

from explain.spec import InputSpec

#: Every input's top probability at or above this, all in one class, is suspicious.
SATURATED = 0.99
#: Fewer inputs than this prove nothing.
MIN_INPUTS = 2


def one_class_warning(probs: np.ndarray, spec: InputSpec) -> str | None:
    """A sentence when every input (at least `MIN_INPUTS`) lands in one class at >= `SATURATED`, else None.

    Args:
        probs: [N, K] class probabilities.
        spec: the model's spec (names the class and says how inputs were preprocessed).
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < MIN_INPUTS or p.shape[1] < 2:
        return None
    top = p.argmax(1)
    if len(set(top.tolist())) != 1 or p.max(1).min() < SATURATED:
        return None
    name = spec.class_name(int(top[0]))
    sentence = (f"Every input ({p.shape[0]}) is predicted '{name}' at ≥ {SATURATED:.0%}: often a sign that the "
                "inputs are not preprocessed as the model was trained")
    if spec.modality == "image" and not spec.image_processor:
        how = ("no mean/std is set" if not (spec.mean and spec.std) else
               "check the mean/std" + ("" if spec.resize else " and the resize"))
        return f"{sentence} ({how}). Set them in the spec (resize, mean / std) and load the model again."
    if spec.modality == "tabular" and not (spec.mean and spec.std):
        return f"{sentence} (no standardisation is set). Give the spec the features' mean and std."
    return sentence + "."
