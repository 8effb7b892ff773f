"""The ``explain`` job's request, built and checked before it is queued (its runner,
`explain.service.runners.run_explain`, saves an Output run):

    params, arrays, title = explain_methods_job(model, name, version, x, [("integrated_gradients", {})])
    params, arrays, title = explain_job(model, name, version, x, {"method": "saliency"})   # the API's form
    params, arrays, title = rerun_job(model, saved_output_run)   # a saved Output run asked again, afresh

Here, beside the other kinds' builders (`explain.dataset.job`, `explain.compare.job`, ...), so the run
kinds' registry (`explain.workspace.run_kinds`) can name `rerun_job` without importing the runners.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from explain.errors import UsageError
from explain.model import LoadedModel
from explain.params import resolve_params
from explain.workspace.runs import SavedRun


def explain_job(model: LoadedModel, name: str, version: int, instances: np.ndarray,
                parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """One method, as the API asks for it: ``parameters`` holds ``method`` (required), ``target``
    (an int, one per instance, or None for the predicted class) and the method's own parameters;
    array parameters (``background``, ``baseline_array``) as nested lists. See `explain_methods_job`."""
    given = dict(parameters or {})
    method_name = given.pop("method", None)
    if not isinstance(method_name, str):
        raise UsageError("parameters.method is required (e.g. \"integrated_gradients\").")
    target = given.pop("target", None)
    return explain_methods_job(model, name, version, instances, [(method_name, given)], target)


def explain_methods_job(model: LoadedModel, name: str, version: int, instances: np.ndarray,
                        methods: list[tuple[str, dict[str, Any]]], target: Any = None, *,
                        rows: list[int] | None = None, shown: list[int] | None = None,
                        labels: np.ndarray | None = None, sign: str = "all",
                        metrics: list[tuple[str, dict[str, Any]]] | None = None, masks: np.ndarray | None = None,
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check an explain request against the model and its methods now (a bad request is refused
    when submitted, not when run): the job's params, its arrays and its title.

    ``instances`` [N, ...] are the rows explained; ``rows`` their indices in the page's batch,
    ``shown`` the ones whose maps are drawn, ``labels`` [N] their labels if known (all as the
    Output page saves them). Method ``i``'s array parameters travel as arrays ``"{i}/{key}"``.
    ``metrics`` (name, parameters) are measured on every method's maps in the same job (``masks``
    [N, ...]: ground truth for the localisation metrics), as the Quality tab shows them.
    """
    from explain.output.methods import get_method
    from explain.output.metrics import get_metric

    if not methods:
        raise UsageError("Choose at least one method.")
    if target is not None and not (isinstance(target, int) or (
            isinstance(target, list) and all(isinstance(t, int) for t in target))):
        raise UsageError("parameters.target must be an integer, a list of integers or null.")
    if isinstance(target, list) and len(target) != len(instances):
        raise UsageError(f"parameters.target has {len(target)} entries for {len(instances)} instances.")
    model.as_tensor(instances)  # IncompatibleInput: the wrong shape for this model
    arrays: dict[str, np.ndarray] = {"inputs": instances}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    listed = []
    for i, (method_name, parameters) in enumerate(methods):
        method = get_method(method_name)
        reason = method.incompatibility(model)
        if reason:
            raise UsageError(reason)
        given, own = dict(parameters or {}), {}
        for key, spec in method.params.items():
            if spec.kind == "array" and isinstance(given.get(key), list):
                own[key] = model_array(model, given.pop(key), key)
            elif spec.kind == "array" and isinstance(given.get(key), np.ndarray):  # from a page's upload widget
                own[key] = given.pop(key)
            elif spec.kind == "array":
                given.pop(key, None)  # None: the method's default
        resolve_params(method.params, {**given, **own})
        method.check_per_input(given.get("per_input"), len(instances))  # a record's per-input values
        arrays.update({f"{i}/{key}": value for key, value in own.items()})
        listed.append({"method": method.name, "params": given})
    measured = []
    for metric_name, metric_params in metrics or []:
        metric = get_metric(metric_name)
        if not metric.is_compatible(model):
            raise UsageError(f"Metric {metric.name!r} does not fit this model.")
        if metric.needs_masks and masks is None:
            raise UsageError(f"Metric {metric.name!r} needs ground-truth masks.")
        resolve_params(metric.params, dict(metric_params or {}))
        measured.append({"metric": metric.name, "params": dict(metric_params or {})})
    if masks is not None:
        arrays["masks"] = np.asarray(masks)
    n = len(instances)
    names = [m["method"] for m in listed]
    params = {"model": name, "version": version, "method": ",".join(names), "target": target, "methods": listed,
              "rows": list(map(int, rows if rows is not None else range(n))),
              "shown": list(map(int, shown if shown is not None else range(n))), "sign": sign, "metrics": measured}
    return params, arrays, f"{', '.join(names)} on {n} inputs of {name}@v{version}"


def rerun_job(model: LoadedModel, run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved Output run's explanation asked again (``model``: its version, loaded): the same inputs,
    methods with their recorded parameters (each input with the values it used: ``per_input``,
    `explain.attribution.Attribution`), target, rows, labels and sign, as an ``explain`` job
    that computes afresh (``fresh``: never the attribution cache) and whose run names the one it
    re-runs (``summary["rerun_of"]``). Its params, arrays and title, as `explain_methods_job`."""
    info = run.info
    if info.page != "output":
        raise UsageError(f"Run {info.id} is a {info.page} run, not an Output run.")
    rows = run.inputs.get("rows")
    params, arrays, title = explain_methods_job(
        model, info.model, info.version, run.inputs["inputs"],
        [(m, dict(info.params.get(m, {}))) for m in info.summary.get("methods", [])], info.target,
        rows=None if rows is None else [int(r) for r in rows], shown=info.summary.get("shown"),
        labels=run.inputs.get("labels"), sign=info.summary.get("sign", "all"))
    params.update(fresh=True, rerun_of=info.id)
    return params, arrays, f"Re-run of {info.id}: {title}"


def model_array(model: LoadedModel, instances: Any, what: str = "instances") -> np.ndarray:
    """JSON nested lists as a model-ready array: int64 ids for text, float32 otherwise."""
    dtype = np.int64 if model.spec.dtype.startswith("int") else np.float32
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # float64 past float32's range: inf, refused below
            array = np.asarray(instances, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{what} is not a rectangular array of numbers.") from None
    if not array.size:
        raise UsageError(f"{what} is empty.")
    if array.ndim == len(model.spec.input_shape):
        array = array[None]
    if array.ndim != len(model.spec.input_shape) + 1 or not len(array):
        raise UsageError(f"{what} has shape {list(array.shape)}; this model takes "
                         f"[N, {', '.join(map(str, model.spec.input_shape))}].")
    if dtype == np.float32 and not np.isfinite(array).all():
        raise UsageError(f"{what} holds NaN or infinite values.")
    if dtype == np.int64 and (np.asarray(instances, dtype=np.float64).reshape(array.shape) != array).any():
        raise UsageError(f"{what} holds numbers that are not whole; this model takes token ids.")
    if dtype == np.int64:  # ids outside the vocabulary: refused before they join anyone's batch
        from explain.errors import IncompatibleInput
        from explain.inputs.reading import as_token_ids

        try:
            as_token_ids(array, model.spec, what)
        except IncompatibleInput as exc:
            raise UsageError(exc.reason, exc.hint) from None
    return array
