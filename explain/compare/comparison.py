"""`Comparison`: what changed from version A to version B, and `compare_models`, the one way to build it.

    comparison = compare_models(model_a, model_b, inputs, "integrated_gradients", {"steps": 32},
                                sizes=(bytes_a, bytes_b), logs=(logs_a, logs_b))
    comparison.to_dict()   # the `python -m explain compare` JSON

Both models are `LoadedModel`s as `explain.loading.loader.load_model` gives them: a user's graph
runs in its sandboxed model process, never in the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain.compare.attributions import AttributionChange, compare_attributions
from explain.compare.outputs import OutputChange, compare_outputs
from explain.compare.structure import StructureChange, describe_structure
from explain.compare.training import Logs, training_histories
from explain.errors import IncompatibleInput
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress
from explain.spec import InputSpec
from explain.training.history import TrainingHistory


@dataclass
class Comparison:
    """Version A against version B on the same inputs [N, ...].

    Attributes:
        labels: the two versions' names (``NAME@v3`` or file names).
        inputs: [N, ...] the model-ready inputs both were run on.
        outputs / attributions / structure: each part's change.
        training: the versions' training histories to overlay (empty when no logs are attached).
        spec: A's spec (how the inputs and maps are drawn).
    """

    labels: tuple[str, str]
    inputs: np.ndarray
    outputs: OutputChange
    attributions: AttributionChange
    structure: StructureChange
    training: list[TrainingHistory] = field(default_factory=list)
    spec: InputSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON: ``outputs``, ``attributions``, ``structure`` (plain values; NaN stays
        NaN here and becomes null through `explain.jsonable.to_json_safe`)."""
        o, s = self.outputs, self.structure
        return {
            "outputs": {"agreement": o.agreement, "flipped": o.flipped, "max_probability_change": o.max_probability_change},
            "attributions": {"rank_correlation": [float(c) for c in self.attributions.rank_correlation],
                             "mean": self.attributions.mean},
            "structure": {"parameters": [s.a.parameters, s.b.parameters],
                          "nonzero_parameters": [s.a.nonzero_parameters, s.b.nonzero_parameters],
                          "flops": [s.a.flops, s.b.flops], "layers_changed": s.layers_changed},
        }

    def most_changed(self, k: int = 4) -> list[int]:
        """Up to ``k`` inputs whose maps to show side by side: the flipped ones first, then the
        lowest rank correlation (undefined correlations last)."""
        flipped = self.outputs.flipped
        corr = np.where(np.isfinite(self.attributions.rank_correlation), self.attributions.rank_correlation, np.inf)
        rest = [int(i) for i in np.argsort(corr, kind="stable") if int(i) not in flipped]
        return (flipped + rest)[:k]


def check_comparable(model_a: LoadedModel, model_b: LoadedModel) -> None:
    """Refuse two models that do not take the same inputs or predict the same classes.

    Raises:
        IncompatibleInput: another modality, input shape or number of classes.
    """
    sa, sb = model_a.spec, model_b.spec
    if sa.modality != sb.modality or tuple(sa.input_shape) != tuple(sb.input_shape):
        raise IncompatibleInput(
            f"These versions take different inputs ({sa.modality} {list(sa.input_shape)} and "
            f"{sb.modality} {list(sb.input_shape)}), so they cannot be compared on the same inputs.")
    if sa.class_names and sb.class_names and len(sa.class_names) != len(sb.class_names):
        raise IncompatibleInput(f"These versions predict {len(sa.class_names)} and {len(sb.class_names)} classes; "
                                "a comparison needs the same classes.")


def compare_models(model_a: LoadedModel, model_b: LoadedModel, inputs: np.ndarray, method: str,
                   params: dict[str, Any] | None = None, *, labels: tuple[str, str] = ("A", "B"),
                   sizes: tuple[int | None, int | None] = (None, None), logs: tuple[Logs, Logs] = ((), ()),
                   progress: ProgressFn | None = None) -> Comparison:
    """Compare B with A on ``inputs`` [N, ...]: outputs, ``method``'s explanations of A's predicted
    class, structure (``sizes``: the files' bytes on disk) and training (``logs``: each version's
    attached logs). ``progress`` runs 0..1000 over the whole comparison.

    Raises:
        IncompatibleInput: models that take other inputs or predict other classes, inputs that fit neither.
        UsageError: an unknown method or parameter.
    """
    check_comparable(model_a, model_b)
    inputs = np.asarray(inputs)
    probs_a, probs_b = model_a.predict_proba(inputs), model_b.predict_proba(inputs)  # [N, K] each
    if probs_a.shape != probs_b.shape:
        raise IncompatibleInput(f"These versions give {probs_a.shape[1]} and {probs_b.shape[1]} outputs per input; "
                                "a comparison needs the same classes.")
    outputs = compare_outputs(probs_a, probs_b)
    report_progress(progress, 50, 1000)
    attributions = compare_attributions(
        model_a, model_b, inputs, method, params, target=outputs.predicted_a,
        progress=lambda done, total: report_progress(progress, 50 + round(850 * done / max(total, 1)), 1000))
    structure = StructureChange(describe_structure(model_a, inputs, sizes[0]), describe_structure(model_b, inputs, sizes[1]))
    report_progress(progress, 1000, 1000)
    return Comparison(labels=tuple(labels), inputs=inputs, outputs=outputs, attributions=attributions,
                      structure=structure, training=training_histories(logs[0], logs[1], labels), spec=model_a.spec)
