"""`Attribution`: the one result type every explanation method returns, and the one wording of
what a map's caption says about it (`completeness_text`, `run_details`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the relative completeness error above which a map is flagged when its method sets no
#: tolerance of its own (`explain.output.methods.base.Explainer.completeness_tolerance`).
COMPLETENESS_TOLERANCE = 0.05
#: the warning marker of a flagged completeness error (page captions and the report).
WARNING_MARK = "⚠"


@dataclass
class Attribution:
    """Attributions for a batch of inputs, from one method.

    Attributes:
        values: float array shaped like ``inputs`` ([N, C, H, W] images,
            [N, F] tabular, [N, L] text token ids: embedding dimensions are
            summed so each token gets one number).
        inputs: the model-ready inputs that were explained.
        target: int array [N], the explained class per input.
        method: registered method name.
        params: the parameters the method ran with (steps, baseline, ...), each
            as asked. ``params["per_input"]`` (present only where it applies):
            ``{name: [N values]}``, the value each input really used of a
            parameter the method adapted per input, e.g. integrated gradients'
            completeness tolerance raising ``steps`` for input 3 alone:
            ``params["steps"] == 50``, ``params["per_input"] == {"steps": [50,
            50, 50, 100]}``. Recorded when some input used a value other than
            the asked one. Passing a record's params back to
            `explain.output.methods.base.Explainer.explain` (``per_input``
            included, cut to the rows explained by
            `explain.params.select_per_input`) computes each input with the
            values it used and adapts nothing, so a re-run, a report or the CLI
            reproduces the record.
        base_value: float array [N]: f(baseline) (IG) or E[f(background)]
            (SHAP family) for the target; NaN where the method defines none.
        output: float array [N]: f(x) for the target logit.
        completeness_error: float array [N]: |sum(values) - (output -
            base_value)| / max(|output - base_value|, 1e-6); NaN where the
            method defines no completeness (saliency, occlusion, Grad-CAM).
        seconds: wall time of the computation.
        device: ``cpu`` / ``cuda:0``.
        precision: ``fp32`` / ``tf32`` / ``bf16``.
        notes: human-readable remarks (precision fallback, step increase).
    """

    values: np.ndarray
    inputs: np.ndarray
    target: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    base_value: np.ndarray | None = None
    output: np.ndarray | None = None
    completeness_error: np.ndarray | None = None
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        self.target = np.asarray(self.target, dtype=np.int64).reshape(n)
        for name in ("base_value", "output", "completeness_error"):
            value = getattr(self, name)
            setattr(self, name, np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64).reshape(n))

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def max_completeness_error(self) -> float | None:
        """Largest per-input completeness error, None if undefined."""
        err = self.completeness_error
        return None if err is None or np.all(np.isnan(err)) else float(np.nanmax(err))

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez``: values, targets, completeness_error, ..."""
        return {
            "values": self.values,
            "inputs": self.inputs,
            "targets": self.target,
            "completeness_error": self.completeness_error,
            "base_value": self.base_value,
            "output": self.output,
        }

    @classmethod
    def from_npz_dict(cls, arrays: dict[str, np.ndarray], method: str, params: dict[str, Any] | None = None,
                      **fields: Any) -> Attribution:
        """The inverse of `to_npz_dict`; a key left out (an optional field that was None) reads as None."""
        return cls(values=arrays["values"], inputs=arrays["inputs"], target=arrays["targets"], method=method,
                   params=dict(params or {}), base_value=arrays.get("base_value"), output=arrays.get("output"),
                   completeness_error=arrays.get("completeness_error"), **fields)


def compute_completeness_error(values: np.ndarray, output: np.ndarray, base_value: np.ndarray) -> np.ndarray:
    """Relative completeness error per input: |Σ values − (f(x) − f(b))| / |f(x) − f(b)|."""
    n = values.shape[0]
    total = values.reshape(n, -1).sum(axis=1)
    delta = np.asarray(output, dtype=np.float64) - np.asarray(base_value, dtype=np.float64)
    return np.abs(total - delta) / np.maximum(np.abs(delta), 1e-6)


def completeness_text(error: float | None, tolerance: float | None = None, remedy: str = "raise steps") -> tuple[str, bool]:
    """The one wording of a completeness error under a map: ``(text, exceeded)``.

    ``("completeness error 1.2e-03", False)`` within ``tolerance``;
    ``("⚠ completeness error 0.38 > tolerance 0.05: raise steps", True)`` above it;
    ``("completeness: not defined", False)`` for NaN (saliency, occlusion, Grad-CAM).

    Args:
        error: the relative completeness error (`compute_completeness_error`).
        tolerance: the largest error accepted; None: never flagged.
        remedy: what to do about an error above ``tolerance`` (the method's).
    """
    if error is None or not np.isfinite(error):
        return "completeness: not defined", False
    if tolerance is not None and error > tolerance:
        return f"{WARNING_MARK} completeness error {error:.2g} > tolerance {tolerance:g}: {remedy}", True
    return f"completeness error {error:.1e}", False


#: recorded parameters a caption names, with their label: the layer Grad-CAM used, the
#: background a SHAP-family method compared with (`explain.output.baselines.describe_background`).
CAPTIONED_PARAMS = {"layer": "layer", "background_description": "background"}


def run_details(params: dict[str, Any]) -> list[str]:
    """What a map's caption names about how it was made, from its recorded ``params``:
    ``["layer layer4", "background: the batch's 4 inputs"]`` (empty when none applies)."""
    out = []
    for key, label in CAPTIONED_PARAMS.items():
        value = params.get(key)
        if isinstance(value, str) and value:
            out.append(f"{label}: {value}")
    return out


def merge_step_raising(records: list[dict | None]) -> dict | None:
    """What the tolerance loop did over several parts of one run (a dataset's shards, each one's
    ``params.get("step_raising")``) as one record: inputs raised summed, the most steps any used, the
    largest error left, stopped by the first limit any part met (None when no part recorded one)."""
    done = [r for r in records if isinstance(r, dict)]
    if not done:
        return None
    stops = [r.get("stopped_by") for r in done if r.get("stopped_by")]
    return {**done[0], "raised": sum(int(r.get("raised", 0)) for r in done),
            "most_used": max(int(r.get("most_used", 0)) for r in done),
            "max_error": max(float(r.get("max_error", 0.0)) for r in done), "stopped_by": stops[0] if stops else None}


def step_raising_text(params: dict, what: str = "input(s)") -> str | None:
    """What the tolerance loop did, in one line (None when it raised nothing and was not stopped),
    from a run's recorded ``params`` (``step_raising``:
    `explain.output.methods.integrated_gradients.integrated_gradients_with_tolerance`; a generation's
    tokens, ``what="token(s)"``: `explain.generation.attribution.attribute_generation`)."""
    did = params.get("step_raising")
    if not isinstance(did, dict):
        return None
    asked, most, raised = did.get("requested"), did.get("most_used"), did.get("raised", 0)
    line = f"Steps: {asked} asked"
    if raised:
        line += f"; the completeness tolerance raised {raised} {what}, up to {most}"
    if did.get("stopped_by") == "steps":
        line += f"; stopped by the step budget ({did.get('limit')} steps at most)"
    elif did.get("stopped_by") == "seconds":
        line += f"; stopped by the time budget ({did.get('seconds_limit'):g} s of raising)"
    if did.get("stopped_by"):
        line += f", largest completeness error left {did.get('max_error', float('nan')):.2g}"
    return line + "."
