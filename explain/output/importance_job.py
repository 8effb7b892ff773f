"""Layer importance as a job of the queue: the Structure page's "Rank layers", saved as an
``importance`` run (`explain.workspace.run_kinds`).

    params, arrays, title = importance_job(model, name, version, inputs, depth=2, steps=16)  # checked now
    record = run_importance_job(model, params, arrays, progress)      # the worker (`service.runners`)
    result = saved_importance(run)                                    # the run read back: a LayerImportance
    params, arrays, title = importance_rerun(run)                     # asked again, computed afresh
    rows = importance_differences(saved, fresh)                       # how the re-run differs, per layer

The run keeps the scored inputs with their spec, the depth and steps asked, and the ranking
(`layer_importance.compute_layer_importance`: LayerIntegratedGradients per layer for the
predicted class), so the page and the Saved runs page draw the same chart from it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from explain.errors import UsageError
from explain.model import LoadedModel
from explain.output.layer_importance import LayerImportance, compute_layer_importance, importance_unavailable_reason
from explain.progress import ProgressFn
from explain.workspace.reruns import as_rerun, max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs


def importance_job(model: LoadedModel, name: str, version: int, inputs: np.ndarray, *, depth: int = 2,
                   steps: int = 16) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a Rank-layers request against ``model`` (``name@v<version>``) now: the job's params, arrays
    ([N, ...] ``inputs``) and title.

    Raises:
        UsageError: the model's layers cannot be scored, or ``depth`` / ``steps`` below 1.
        IncompatibleInput: ``inputs`` do not fit the model.
    """
    reason = importance_unavailable_reason(model)
    if reason:
        raise UsageError(reason)
    if int(depth) < 1 or int(steps) < 1:
        raise UsageError("Layer importance needs a depth and a number of steps of at least 1.")
    model.as_tensor(inputs)  # IncompatibleInput: the wrong shape for this model
    params = {"model": name, "version": int(version), "depth": int(depth), "steps": int(steps)}
    return params, {"inputs": np.asarray(inputs)}, f"Layer importance (depth {depth}) on {len(inputs)} inputs of {name}@v{version}"


def importance_record(name: str, version: int, model: LoadedModel, inputs: np.ndarray, depth: int,
                      result: LayerImportance) -> RunRecord:
    """The ``importance`` run: the inputs with their spec, what was asked and the ranking."""
    return RunRecord(
        page="importance", model=name, version=version, method="layer_integrated_gradients",
        title=f"Layer importance of {model.name} ({len(result.layers)} layers, {len(inputs)} inputs)",
        params={"depth": int(depth), "steps": int(result.steps)},
        inputs={"inputs": np.asarray(inputs), **spec_inputs(model.spec)},
        results={"magnitude": np.asarray(result.magnitude, dtype=np.float64),
                 "total": np.asarray(result.total, dtype=np.float64), "target": np.asarray(result.target)},
        summary={"layers": list(result.layers), "skipped": dict(result.skipped), "depth": int(depth)},
        environment=environment())


def run_importance_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                       progress: ProgressFn | None = None) -> RunRecord:
    """What the worker runs for an ``importance`` job (`importance_job` built it)."""
    inputs = arrays["inputs"]
    result = compute_layer_importance(model, inputs, depth=int(params["depth"]), steps=int(params["steps"]),
                                      progress=progress)
    return as_rerun(importance_record(params["model"], int(params["version"]), model, inputs, int(params["depth"]),
                                      result), params)


def importance_rerun(run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved importance run asked again as an ``importance`` job (its params, arrays and title): the same
    inputs, depth and steps (LayerIntegratedGradients computes afresh: nothing is cached); its run names
    this one (``rerun_of``)."""
    info = run.info
    params = {"model": info.model, "version": int(info.version), "depth": int(info.summary["depth"]),
              "steps": int(info.params["steps"]), "rerun_of": info.id}
    return params, {"inputs": np.asarray(run.inputs["inputs"])}, f"Re-run of {info.id}: {info.title}"


def importance_differences(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, `importance_rerun`'s run) differs from the ranking it repeats, per saved layer
    (by name: near ties may swap places): the largest absolute difference of its magnitude and total (also
    relative to the saved layer's larger one; NaN for a layer the re-run did not score) and whether every
    input was explained for the same class."""
    was, now = saved_importance(saved), saved_importance(fresh)
    where = {layer: i for i, layer in enumerate(now.layers)}
    same = bool(np.array_equal(was.target, now.target))
    rows = []
    for i, layer in enumerate(was.layers):
        j = where.get(layer)
        before = np.asarray([was.magnitude[i], was.total[i]])
        diff = max_difference(before, [now.magnitude[j], now.total[j]]) if j is not None else float("nan")
        rows.append({"layer": layer, "max |difference|": diff, "relative to the largest value": relative(diff, before),
                     "same targets": same})
    return rows


def saved_importance(run: SavedRun) -> LayerImportance:
    """The inverse of `importance_record`: the ranking as `compute_layer_importance` returned it."""
    summary, results = run.info.summary, run.results
    return LayerImportance(layers=list(summary.get("layers", [])), magnitude=np.asarray(results["magnitude"]),
                           total=np.asarray(results["total"]), target=np.asarray(results["target"]),
                           steps=int(run.info.params.get("steps", 0)), skipped=dict(summary.get("skipped", {})))
