"""What each job kind runs: a function from a `JobContext` to the `RunRecord` the job saves.

    RUNNERS["explain"]   one method on a batch of inputs -> an Output run (`explain_job` builds it)
    register_runner("dataset", fn)   the seam for dataset-wide runs (issue 14's ``batch``)

A runner reports progress with ``ctx.progress(done, total)``; that call raises `Cancelled`
when the job's owner cancelled it, which the attribution engine lets through.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.errors import UsageError
from explain.model import LoadedModel
from explain.params import resolve_params
from explain.service.models import ModelCache
from explain.workspace import RunRecord, Workspace
from explain.workspace.jobs import JobInfo
from explain.workspace.records import output_record

ProgressFn = Callable[[int, int], None]


@dataclass
class JobContext:
    ws: Workspace
    job: JobInfo
    inputs: dict[str, np.ndarray]  # the arrays submitted with the job
    progress: ProgressFn
    models: ModelCache

    def model(self, name: str, version: int) -> LoadedModel:
        """A registry version, loaded as the job's owner may see it."""
        return self.models.get(self.job.owner_actor, name, version)


Runner = Callable[[JobContext], RunRecord]
RUNNERS: dict[str, Runner] = {}


def register_runner(kind: str, runner: Runner) -> None:
    RUNNERS[kind] = runner


def explain_job(model: LoadedModel, name: str, version: int, instances: np.ndarray,
                parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check an explain request against the model and method now (a bad request is refused when
    submitted, not when run): the job's params, its arrays and its title.

    ``parameters``: ``method`` (required), ``target`` (an int, one per instance, or None for the
    predicted class) and the method's own parameters; array parameters (``background``,
    ``baseline_array``) as nested lists.
    """
    from explain.output.methods import get_method

    given = dict(parameters or {})
    method_name = given.pop("method", None)
    if not isinstance(method_name, str):
        raise UsageError("parameters.method is required (e.g. \"integrated_gradients\").")
    method = get_method(method_name)
    target = given.pop("target", None)
    if target is not None and not (isinstance(target, int) or (
            isinstance(target, list) and all(isinstance(t, int) for t in target))):
        raise UsageError("parameters.target must be an integer, a list of integers or null.")
    if isinstance(target, list) and len(target) != len(instances):
        raise UsageError(f"parameters.target has {len(target)} entries for {len(instances)} instances.")
    model.as_tensor(instances)  # IncompatibleInput: the wrong shape for this model
    reason = method.incompatibility(model)
    if reason:
        raise UsageError(reason)
    arrays = {"inputs": instances}
    for key, spec in method.params.items():
        if spec.kind == "array" and isinstance(given.get(key), list):
            arrays[key] = model_array(model, given.pop(key), key)
        elif spec.kind == "array" and isinstance(given.get(key), np.ndarray):  # from a page's upload widget
            arrays[key] = given.pop(key)
        elif spec.kind == "array":
            given.pop(key, None)  # None: the method's default
    resolve_params(method.params, {**given, **{k: v for k, v in arrays.items() if k != "inputs"}})
    params = {"model": name, "version": version, "method": method.name, "target": target, "params": given}
    return params, arrays, f"{method.name} on {len(instances)} inputs of {name}@v{version}"


def model_array(model: LoadedModel, instances: Any, what: str = "instances") -> np.ndarray:
    """JSON nested lists as a model-ready array: int64 ids for text, float32 otherwise."""
    dtype = np.int64 if model.spec.dtype.startswith("int") else np.float32
    try:
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
    return array


def run_explain(ctx: JobContext) -> RunRecord:
    """One method on the job's inputs, saved as an Output run (as the Output page saves it)."""
    from explain.output.methods import get_method

    p = ctx.job.params
    model = ctx.model(p["model"], int(p["version"]))
    inputs = ctx.inputs["inputs"]  # [N, *input_shape]
    arrays = {k: v for k, v in ctx.inputs.items() if k != "inputs"}
    target = np.asarray(p["target"]) if isinstance(p.get("target"), list) else p.get("target")
    attr = get_method(p["method"]).explain(model, inputs, target=target, progress=ctx.progress, use_cache=False,
                                           **p.get("params", {}), **arrays)
    probs = model.predict_proba(inputs)  # [N, K]
    shown = list(range(len(inputs)))
    params = {attr.method: {k: v for k, v in attr.params.items() if not isinstance(v, np.ndarray)}}
    return output_record(p["model"], int(p["version"]), model, inputs, shown, shown, probs, None, [attr],
                         p.get("target"), "all", params)


register_runner("explain", run_explain)
