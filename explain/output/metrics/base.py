"""`Metric` base class, `MetricResult` and the metric registry.

One metric per module in ``explain/output/metrics/<category>/`` (the categories are
Quantus's: faithfulness, robustness, randomisation, localisation, complexity). Each
subclasses `Metric`, declares its parameters as `ParamSpec`s and ``is_compatible(model)``,
and registers itself with `register`; the UI builds widgets from ``params``, the CLI
takes them as ``--param NAME=VALUE``. Every metric returns one `MetricResult`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from explain.attribution import Attribution
from explain.errors import GlassboxError, IncompatibleInput, TooLarge, UsageError, one_line
from explain.model import LoadedModel
from explain.output.cache import AttributionCache, make_key
from explain.output.metrics.common import feature_shape
from explain.output.precision import is_out_of_memory
from explain.params import ParamSpec, resolve_params
from explain.progress import ProgressFn, report_progress

#: explain(model, inputs [N, ...], targets [N]) -> values shaped like the inputs: the
#: method being judged, re-run by robustness and randomisation metrics.
ExplainFn = Callable[[LoadedModel, np.ndarray, np.ndarray], np.ndarray]

#: the metric categories (Quantus's taxonomy), in the order the UI lists them.
CATEGORIES = ("faithfulness", "robustness", "randomisation", "localisation", "complexity")

_REGISTRY: dict[str, Metric] = {}


@dataclass
class MetricResult:
    """One metric of one method's attributions.

    Attributes:
        metric: registered metric name. method: the attribution method judged.
        per_input: float [N], NaN where undefined (an empty mask).
        random_baseline: float [N]: the same metric of a random attribution (the
            method's own values, randomly permuted within each input), or None for
            metrics without a chance level (robustness, randomisation, localisation,
            complexity).
        higher_is_better: the direction of ``per_input``.
        curve_x: [K] the curve's x axis (fraction of features removed / added, or the
            randomisation step), None without a curve.
        curve: [N, K] per input (deletion / insertion scores, rank correlations), or None.
        random_curve: [N, K] the random attribution's curve, or None.
        curve_labels: [K] names of the curve's points (randomised layers), or empty.
        params: the parameters the metric ran with.
        seconds, device: wall time and where the forward passes ran.
        notes: remarks for the user.
    """

    metric: str
    method: str
    per_input: np.ndarray
    random_baseline: np.ndarray | None = None
    higher_is_better: bool = True
    curve_x: np.ndarray | None = None
    curve: np.ndarray | None = None
    random_curve: np.ndarray | None = None
    curve_labels: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.per_input = np.asarray(self.per_input, dtype=np.float64).reshape(-1)
        if self.random_baseline is not None:
            self.random_baseline = np.asarray(self.random_baseline, dtype=np.float64).reshape(-1)

    def __len__(self) -> int:
        return len(self.per_input)

    @property
    def mean(self) -> float:
        """Mean over the inputs where the metric is defined (NaN when none is)."""
        return _nanmean(self.per_input)

    @property
    def random_mean(self) -> float | None:
        return None if self.random_baseline is None else _nanmean(self.random_baseline)

    @property
    def margin(self) -> float | None:
        """How much better than chance the mean is (positive: better), None without a baseline."""
        if self.random_mean is None:
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * (self.mean - self.random_mean)

    def beats_random(self) -> np.ndarray | None:
        """bool [N]: the method did better than its random attribution on each input."""
        if self.random_baseline is None:
            return None
        diff = self.per_input - self.random_baseline
        return diff > 0 if self.higher_is_better else diff < 0

    @property
    def nbytes(self) -> int:
        arrays = (self.per_input, self.random_baseline, self.curve, self.random_curve, self.curve_x)
        return int(sum(a.nbytes for a in arrays if a is not None))

    ARRAYS: ClassVar[tuple[str, ...]] = ("per_input", "random_baseline", "curve_x", "curve", "random_curve")

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """The arrays (those that are not None), for a saved run; `meta` holds the rest."""
        return {key: np.asarray(getattr(self, key)) for key in self.ARRAYS if getattr(self, key) is not None}

    def meta(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON values."""
        return {"higher_is_better": bool(self.higher_is_better), "curve_labels": list(self.curve_labels),
                "params": {k: v for k, v in self.params.items() if not isinstance(v, np.ndarray)},
                "seconds": float(self.seconds), "device": self.device, "notes": list(self.notes)}

    @classmethod
    def from_npz_dict(cls, metric: str, method: str, arrays: dict[str, np.ndarray],
                      meta: dict[str, Any]) -> MetricResult:
        """The inverse of `to_npz_dict` and `meta`."""
        return cls(metric, method, **{key: arrays.get(key) for key in cls.ARRAYS},
                   higher_is_better=bool(meta.get("higher_is_better", True)),
                   curve_labels=list(meta.get("curve_labels", [])), params=dict(meta.get("params", {})),
                   seconds=float(meta.get("seconds", 0.0)), device=str(meta.get("device", "cpu")),
                   notes=list(meta.get("notes", [])))

    def to_json(self) -> dict[str, Any]:
        """``{"per_input": [...], "mean": x, "random_baseline": y or None}`` (the CLI's shape);
        the randomisation metric adds ``curve`` (mean rank correlation per step) and ``layers``."""
        out: dict[str, Any] = {
            "per_input": [None if not np.isfinite(v) else float(v) for v in self.per_input],
            "mean": _json_float(self.mean),
            "random_baseline": None if self.random_mean is None else _json_float(self.random_mean),
        }
        if self.metric == "randomization" and self.curve is not None:
            out["curve"] = [_json_float(v) for v in _nanmean_axis0(self.curve)]
            out["layers"] = list(self.curve_labels)
        return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _nanmean_axis0(values: np.ndarray) -> np.ndarray:
    return np.array([_nanmean(values[:, k]) for k in range(values.shape[1])])


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass
class Subject:
    """What a metric judges.

    Attributes:
        model: the model the attributions explain.
        attribution: the method's result (values [N, ...], inputs, targets).
        masks: bool [N, *feature shape] ground-truth regions ([N, H, W] images,
            [N, F] tabular, [N, L] text), or None.
        explain: re-runs the method (robustness, randomisation), or None.
    """

    model: LoadedModel
    attribution: Attribution
    masks: np.ndarray | None = None
    explain: ExplainFn | None = None


class Metric:
    """A registered quality metric.

    Subclasses set ``name``, ``category``, ``title``, ``summary`` (one line for a
    tooltip), ``higher_is_better``, ``params`` and implement ``_evaluate``.
    """

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: modalities the metric is defined for.
    modalities: ClassVar[tuple[str, ...]] = ("image", "tabular", "text")
    #: needs ground-truth masks (localisation).
    needs_masks: ClassVar[bool] = False
    #: re-runs the method (robustness, randomisation): costly.
    reexplains: ClassVar[bool] = False
    #: also judges a causal LM's token attributions (`explain.generation.quality`).
    judges_tokens: ClassVar[bool] = False
    params: ClassVar[dict[str, ParamSpec]] = {}

    def is_compatible(self, model: LoadedModel) -> bool:
        return self.incompatibility(model) is None

    def incompatibility(self, model: LoadedModel) -> str | None:
        """Why this metric cannot judge attributions of ``model`` (None when it can)."""
        if model.spec.is_causal_lm:
            return (f"{self.name} judges a classifier's attributions; a causal LM's token attributions are "
                    "judged on the Generate page and by generate --quality (comprehensiveness, sufficiency, deletion, "
                    "insertion).")
        if model.modality not in self.modalities:
            return f"{self.name} is defined for {' and '.join(self.modalities)} models, not {model.modality}."
        return None

    def evaluate(
        self,
        model: LoadedModel,
        attribution: Attribution,
        masks: np.ndarray | None = None,
        explain: ExplainFn | None = None,
        progress: ProgressFn | None = None,
        use_cache: bool = True,
        **params: Any,
    ) -> MetricResult:
        """Judge ``attribution`` (of ``model``) by this metric.

        Args:
            masks: ground truth for localisation metrics ([N, H, W] images, [N, F], [N, L]).
            explain: how to re-run the method (robustness, randomisation); default: the
                registered method ``attribution.method`` with ``attribution.params``.
            progress: called with (done, total) as the engine's chunks finish.
            use_cache: return a stored result for the same (model, inputs, values,
                method, params, metric, params, masks) from `METRIC_CACHE`, and store
                this one. A custom ``explain`` is never cached (it has no name).
            params: metric parameters, validated against ``self.params``.
        """
        reason = self.incompatibility(model)
        if reason:
            raise IncompatibleInput(reason)
        resolved = resolve_params(self.params, params)
        masks = check_masks(masks, attribution, model, self.name) if self.needs_masks else None
        use_cache = use_cache and explain is None
        key = None
        if use_cache:
            key = make_key(model, attribution.inputs, f"{attribution.method}/{self.name}",
                           {"metric": resolved, "method": attribution.params, "values": attribution.values,
                            "masks": masks}, attribution.target)
            cached = METRIC_CACHE.get(key)
            if cached is not None:
                cached.notes.append("from the metric cache")
                report_progress(progress, 1, 1)
                return cached
        if self.reexplains and explain is None:
            explain = registered_explain(attribution)
        subject = Subject(model, attribution, masks, explain)
        start = time.perf_counter()
        try:
            result = self._evaluate(subject, progress, **resolved)
        except GlassboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model raised
            if is_out_of_memory(exc):
                raise TooLarge("Out of memory.", "Use fewer inputs, steps or samples, or device cpu.") from exc
            raise IncompatibleInput(f"{self.name} failed: {one_line(exc, 200)}") from exc
        result.seconds = time.perf_counter() - start
        if key is not None:
            METRIC_CACHE.put(key, result)
        return result

    def _evaluate(self, subject: Subject, progress: ProgressFn | None, **params: Any) -> MetricResult:  # pragma: no cover
        raise NotImplementedError

    def result(self, subject: Subject, per_input, **fields: Any) -> MetricResult:
        """A `MetricResult` of this metric for ``subject``'s method."""
        return MetricResult(self.name, subject.attribution.method, per_input,
                            higher_is_better=self.higher_is_better, **fields)


def registered_explain(attribution: Attribution) -> ExplainFn:
    """Re-run ``attribution``'s registered method with its recorded parameters (no cache).

    What it recorded is what it used, so a completeness tolerance is switched off (a
    randomised model would otherwise raise the steps without end): inputs as many as the
    attribution's are computed each with its recorded per-input values (``per_input``,
    e.g. the steps the tolerance raised for some), other batches (perturbed copies) with
    the largest recorded value for every row. Array parameters (an uploaded baseline) are
    not recorded: those fall back to their defaults.
    """
    from explain.output.methods import get_method
    from explain.params import PER_INPUT

    method = get_method(attribution.method)
    params = {k: v for k, v in attribution.params.items() if k in method.params}
    if "tolerance" in method.params:
        params["tolerance"] = 0.0
    per_input = attribution.params.get(PER_INPUT) or {}
    largest = {name: max(values) for name, values in per_input.items() if name in method.params and len(values)}

    def explain(model: LoadedModel, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if per_input and len(inputs) == len(attribution):
            return method.explain(model, inputs, target=targets, use_cache=False, per_input=per_input,
                                  **params).values
        return method.explain(model, inputs, target=targets, use_cache=False, **{**params, **largest}).values

    return explain


def check_masks(masks: Any, attribution: Attribution, model: LoadedModel, name: str) -> np.ndarray:
    """Ground-truth masks as bool [N, *feature shape]; one clear message when they do not fit."""
    if masks is None:
        raise UsageError(f"{name} needs ground-truth masks (--masks FILE, or the sample's masks).")
    m = np.asarray(masks)
    n = len(attribution)
    want = feature_shape(model, attribution.values)
    if m.ndim == len(want) + 2 and m.shape[1] == 1:  # [N, 1, H, W]
        m = m[:, 0]
    if m.shape != (n, *want):
        raise IncompatibleInput(
            f"The masks have shape {m.shape}; expected {(n, *want)} (one mask per input)."
        )
    return m.astype(bool)


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add a metric to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_metric(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"Unknown metric {name!r}. Known: {', '.join(_REGISTRY)}.") from None


def all_metrics() -> list[Metric]:
    return list(_REGISTRY.values())


def compatible_metrics(model: LoadedModel) -> list[Metric]:
    return [m for m in _REGISTRY.values() if m.is_compatible(model)]


#: the process-wide cache `Metric.evaluate` uses.
METRIC_CACHE = AttributionCache(size_of=lambda result: result.nbytes)
