"""`Explainer` base class and the method registry.

One method per module in ``explain/methods/``; each subclasses `Explainer`,
declares its parameters as `ParamSpec`s and ``is_compatible(model)``, and
registers itself with `register`. The UI lists only compatible methods and
builds widgets from ``params`` (with the choices `Explainer.param_choices` lists for
parameters whose choices depend on the model, e.g. Grad-CAM's layer); the CLI turns
them into flags. `completeness_caption` is the one judgement of a map's completeness
error against its method's tolerance, for the pages and the report.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from explain.attribution import COMPLETENESS_TOLERANCE, Attribution, completeness_text
from explain.errors import IncompatibleInput, UsageError
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.params import ParamSpec
from explain.progress import ProgressFn, report_progress
from explain.spec import CAUSAL_LM_NOTE

_REGISTRY: dict[str, Explainer] = {}


class Explainer:
    """A registered attribution method.

    Subclasses set ``name``, ``family``, ``params`` and implement
    ``is_compatible`` and ``_explain``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # "gradient" | "shap" | "perturbation" | "layer"
    #: What a subclass defines of these runs in the model's own process for a user's graph
    #: (`explain.loading.model_process`): the method sees the graph itself there.
    IN_MODEL_PROCESS: ClassVar[tuple[str, ...]] = ("is_compatible", "incompatibility", "param_choices", "_explain")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in Explainer.IN_MODEL_PROCESS:
            if attr in cls.__dict__:
                setattr(cls, attr, _dispatching(cls.__dict__[attr]))
    title: ClassVar[str] = ""
    params: ClassVar[dict[str, ParamSpec]] = {}
    #: the completeness error above which a map is flagged (a ``tolerance`` parameter above 0
    #: overrides it); meaningless where the method defines no completeness (its errors are NaN).
    completeness_tolerance: ClassVar[float] = COMPLETENESS_TOLERANCE
    #: what to do about an error above the tolerance, as the flag says it.
    completeness_remedy: ClassVar[str] = "raise steps"
    #: parameters the method may adapt per input (integrated gradients' ``steps``, raised by its
    #: tolerance); what each input used is recorded as ``params["per_input"]`` and given back
    #: to `explain` as ``per_input`` (`explain.attribution.Attribution`).
    per_input_params: ClassVar[tuple[str, ...]] = ()
    #: True when explaining a model is forward and backward passes through it only (no hook, patch
    #: or mode change on its module; a text model's embedding hook acts in its own thread's passes
    #: only, `ModelFunction.session`): two queue workers may then run it on one shared model at once
    #: (`explain.service.model_locks`).
    shares_model: ClassVar[bool] = False

    def tolerance(self, params: dict[str, Any]) -> float:
        """The completeness tolerance of a run with these (recorded) ``params``."""
        given = params.get("tolerance")
        return float(given) if isinstance(given, (int, float)) and given > 0 else self.completeness_tolerance

    def param_choices(self, model: LoadedModel) -> dict[str, list[Any]]:
        """Parameter name -> the values it can take on ``model``, for parameters whose choices
        depend on the model (Grad-CAM's layer); the page offers them in a select box, the
        first as the default. Runs in the model's process and is remembered per model state."""
        return {}

    def is_compatible(self, model: LoadedModel) -> bool:
        return not model.spec.is_causal_lm  # a causal LM is explained by explain.generation

    def incompatibility(self, model: LoadedModel) -> str | None:
        """Why this method cannot run on ``model`` (None when it can)."""
        if model.spec.is_causal_lm:
            return CAUSAL_LM_NOTE
        return None if self.is_compatible(model) else f"{self.name} does not support this model."

    def explain(
        self,
        model: LoadedModel,
        inputs: np.ndarray,
        target: np.ndarray | int | None = None,
        progress: ProgressFn | None = None,
        use_cache: bool = True,
        per_input: dict[str, Any] | None = None,
        **params: Any,
    ) -> Attribution:
        """Attribute ``model``'s ``target`` logit for ``inputs``.

        Args:
            inputs: model-ready batch ([N, ...] shaped by the spec).
            target: class per input, one class for all, or None for the
                predicted class.
            progress: called with (done, total) as batches finish.
            use_cache: return a stored result for the same (model, inputs,
                method, params, target) from `ATTRIBUTION_CACHE`, and store
                this one.
            per_input: ``{name: [N values]}``, a record's per-input values
                (``Attribution.params["per_input"]``): input ``i`` is computed
                with ``values[i]`` of each, and the method adapts nothing (a
                completeness tolerance raises no steps). Only names in
                `per_input_params`.
            params: method parameters, validated against ``self.params``.
        """
        reason = self.incompatibility(model)
        if reason:
            raise IncompatibleInput(reason)
        from explain.output.cache import ATTRIBUTION_CACHE, make_key
        from explain.params import resolve_params

        inputs = np.asarray(inputs)
        resolved = resolve_params(self.params, params)
        fixed = self.check_per_input(per_input, len(inputs))
        if fixed:
            resolved["per_input"] = fixed  # `EngineMethod` hands it to `run`; part of the cache key
        key = make_key(model, inputs, self.name, resolved, target) if use_cache else None
        cached = ATTRIBUTION_CACHE.get(key) if use_cache else None
        if cached is not None:
            cached.notes.append("from the attribution cache")
            report_progress(progress, 1, 1)
            return cached
        result = self._explain(model, inputs, target, progress, **resolved)
        if use_cache:
            ATTRIBUTION_CACHE.put(key, result)
        return result

    def _explain(self, model, inputs, target, progress, **params) -> Attribution:  # pragma: no cover
        raise NotImplementedError

    def check_per_input(self, per_input: dict[str, Any] | None, n: int) -> dict[str, list[Any]] | None:
        """``per_input`` validated for ``n`` inputs: each name one of `per_input_params`, ``n`` values
        each fitting the parameter's spec; None when there is none.

        Raises:
            UsageError: an unknown name, or not one value per input.
        """
        if not per_input:
            return None
        if not isinstance(per_input, dict):
            raise UsageError(f"per_input must map parameter names to one value per input, not {type(per_input).__name__}.")
        out = {}
        for name, values in per_input.items():
            if name not in self.per_input_params:
                raise UsageError(f"{self.name} takes no per-input values of {name!r}.",
                                 f"Per-input values: {', '.join(self.per_input_params) or 'none'}.")
            values = list(np.asarray(values).ravel()) if isinstance(values, np.ndarray) else values
            if not isinstance(values, (list, tuple)) or len(values) != n:
                got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
                raise UsageError(f"per_input[{name!r}] has {got} values for {n} inputs.",
                                 "Cut a record's per-input values to the rows explained (select_per_input).")
            out[name] = [self.params[name].coerce(name, v) for v in values]
        return out


def _dispatching(func: Callable) -> Callable:
    """``func(self, model, ...)`` run in ``model``'s process when it has one (answers about
    compatibility remembered per model state, as they do not change)."""

    @functools.wraps(func)
    def wrapper(self: Explainer, model: LoadedModel, *args: Any, **kwargs: Any) -> Any:
        if func.__name__ in ("is_compatible", "incompatibility") and model.spec.is_causal_lm:
            return False if func.__name__ == "is_compatible" else CAUSAL_LM_NOTE  # explain.generation's
        process = getattr(model, "process", None)
        if process is None:
            return func(self, model, *args, **kwargs)
        if func.__name__ == "_explain":
            return _method_call(model, self.name, func.__name__, *args, **kwargs)
        key = (func.__name__, self.name, repr(model.spec.to_dict()), model.max_batch_rows)
        if key not in process.memo:
            process.memo[key] = _method_call(model, self.name, func.__name__, *args, **kwargs)
        return process.memo[key]

    return wrapper


@in_model_process
def _method_call(model: LoadedModel, name: str, attr: str, *args: Any, **kwargs: Any) -> Any:
    """``get_method(name).<attr>(model, ...)``, in the model's process."""
    return getattr(get_method(name), attr)(model, *args, **kwargs)


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Explainer:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"Unknown method {name!r}. Known: {', '.join(sorted(_REGISTRY))}.") from None


def all_methods() -> list[Explainer]:
    return list(_REGISTRY.values())


def compatible_methods(model: LoadedModel) -> list[Explainer]:
    return [m for m in _REGISTRY.values() if m.is_compatible(model)]


def completeness_caption(attr: Attribution, index: int) -> tuple[str, bool]:
    """Input ``index``'s completeness error judged against its method's tolerance:
    ``(text, exceeded)`` (`explain.attribution.completeness_text`); a method no longer
    registered is judged against the default tolerance."""
    method = _REGISTRY.get(attr.method)
    tolerance = method.tolerance(attr.params) if method else COMPLETENESS_TOLERANCE
    remedy = method.completeness_remedy if method else "raise steps"
    return completeness_text(float(attr.completeness_error[index]), tolerance, remedy)
