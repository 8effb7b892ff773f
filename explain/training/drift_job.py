"""Checkpoint drift as a job of the queue: the Training page's "Attribution drift", saved as a
``drift`` run (`explain.workspace.run_kinds`).

    params, arrays, title = drift_job(model, name, version, [(file name, bytes), ...], inputs, steps=32)
    record = run_drift_job(model, params, arrays, progress)    # the worker (`service.runners`)
    drift = saved_drift(run)                                   # the run read back: an AttributionDrift
    params, arrays, title = drift_rerun(run)                   # asked again, computed afresh
    rows = drift_differences(saved, fresh)                     # how the re-run differs, per checkpoint

The checkpoints travel as their bytes (read by `checkpoints.read_checkpoint` in the worker, as the
page reads them); the run keeps the explained inputs with their spec, every checkpoint's maps
and rank correlations (`evolution.compute_checkpoint_drift`), so the page and the Saved runs page
draw the same figures from it, and the checkpoints as the job carried them, so it can be re-run.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.errors import UsageError
from explain.model import LoadedModel
from explain.progress import ProgressFn
from explain.training.checkpoints import read_checkpoint, sort_checkpoints
from explain.training.evolution import AttributionDrift, compute_checkpoint_drift
from explain.workspace.reruns import as_rerun, largest, max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs

if TYPE_CHECKING:  # types only
    from explain.workspace import Actor, Workspace


def drift_job(model: LoadedModel, name: str, version: int, checkpoints: Sequence[tuple[str, bytes]],
              inputs: np.ndarray, *, steps: int = 32) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a drift request now: two checkpoints or more that read (in training order), inputs that
    fit ``model``; the job's params, arrays (the checkpoints' bytes, the inputs) and title.

    Raises:
        UsageError: fewer than two checkpoints, or ``steps`` below 1.
        CorruptFile / UnsafeFile: a checkpoint does not read.
        IncompatibleInput: ``inputs`` do not fit the model.
    """
    if len(checkpoints) < 2:
        raise UsageError("Attribution drift needs at least two checkpoints.")
    if int(steps) < 1:
        raise UsageError("Attribution drift needs at least one integration step.")
    for file_name, data in checkpoints:
        read_checkpoint(data, filename=file_name)  # refused here, not in the worker
    model.as_tensor(inputs)
    arrays = {"inputs": np.asarray(inputs)}
    arrays.update({f"checkpoint/{i}": np.frombuffer(bytes(data), dtype=np.uint8)
                   for i, (_, data) in enumerate(checkpoints)})
    params = {"model": name, "version": int(version), "steps": int(steps),
              "checkpoints": [file_name for file_name, _ in checkpoints]}
    return params, arrays, f"Attribution drift over {len(checkpoints)} checkpoints on {len(inputs)} inputs of {name}@v{version}"


def drift_record(name: str, version: int, model: LoadedModel, inputs: np.ndarray, steps: int,
                 drift: AttributionDrift, checkpoints: Sequence[tuple[str, np.ndarray]] = ()) -> RunRecord:
    """The ``drift`` run: the inputs with their spec, each checkpoint's maps and correlations, and
    ``checkpoints`` (file name, bytes as uint8) as the job carried them (``checkpoint/<i>``, for a re-run)."""
    return RunRecord(
        page="drift", model=name, version=version, method=drift.method,
        title=f"Attribution drift of {model.name} over {len(drift.labels)} checkpoints",
        params={"steps": int(steps), **({"checkpoints": [n for n, _ in checkpoints]} if checkpoints else {})},
        inputs={"inputs": np.asarray(inputs), **spec_inputs(model.spec),
                **{f"checkpoint/{i}": np.asarray(data, dtype=np.uint8) for i, (_, data) in enumerate(checkpoints)}},
        results={"values": drift.values, "maps": drift.maps, "correlation": drift.correlation,
                 "target": np.asarray(drift.target)},
        summary={"labels": list(drift.labels), "epochs": [None if e is None else float(e) for e in drift.epochs],
                 "mean_correlation": [None if np.isnan(c) else float(c) for c in drift.mean_correlation]},
        environment=environment())


def run_drift_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                  progress: ProgressFn | None = None, *, workspace: Workspace | None = None,
                  actor: Actor | None = None) -> RunRecord:
    """What the worker runs for a ``drift`` job (`drift_job` built it): the checkpoints in training order,
    each one's model loaded through ``workspace``'s role check for ``actor`` (the job's owner) when given
    (`evolution.model_at`)."""
    files = [(file_name, arrays[f"checkpoint/{i}"]) for i, file_name in enumerate(params["checkpoints"])]
    checkpoints = sort_checkpoints(read_checkpoint(np.asarray(data, dtype=np.uint8).tobytes(), filename=file_name)
                                   for file_name, data in files)
    inputs = arrays["inputs"]
    drift = compute_checkpoint_drift(checkpoints, model, inputs, steps=int(params["steps"]), progress=progress,
                                     workspace=workspace, actor=actor)
    return as_rerun(drift_record(params["model"], int(params["version"]), model, inputs, int(params["steps"]), drift,
                                 files), params)


def drift_rerun(run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved drift run asked again as a ``drift`` job (its params, arrays and title): the same checkpoints
    (as the run kept them), inputs and steps, each checkpoint's model built and explained afresh; its run
    names this one (``rerun_of``).

    Raises:
        UsageError: a drift run saved before drift runs kept their checkpoints.
    """
    info = run.info
    names = info.params.get("checkpoints")
    if not names:
        raise UsageError(f"Run {info.id} was saved before drift runs kept their checkpoints, so it cannot be re-run.",
                         "Compute the drift again on the Training page.")
    arrays = {"inputs": np.asarray(run.inputs["inputs"]),
              **{f"checkpoint/{i}": np.asarray(run.inputs[f"checkpoint/{i}"]) for i in range(len(names))}}
    params = {"model": info.model, "version": int(info.version), "steps": int(info.params["steps"]),
              "checkpoints": list(names), "rerun_of": info.id}
    return params, arrays, f"Re-run of {info.id}: {info.title}"


def drift_differences(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, `drift_rerun`'s run) differs from the drift it repeats, per checkpoint (in
    training order): the largest absolute difference of its maps and rank correlations (also relative to the
    saved ones' largest value; NaN where the shapes differ or a correlation became undefined) and whether
    every input was explained for the same class."""
    was, now = saved_drift(saved), saved_drift(fresh)
    same = bool(np.array_equal(was.target, now.target))
    rows = []
    for k, label in enumerate(was.labels):
        if k < len(now.labels) and now.labels[k] == label:
            diff = largest([max_difference(was.values[k], now.values[k]),
                            max_difference(was.correlation[k], now.correlation[k])])
        else:
            diff = float("nan")
        rows.append({"checkpoint": label, "max |difference|": diff,
                     "relative to the largest value": relative(diff, was.values[k]), "same targets": same})
    return rows


def saved_drift(run: SavedRun) -> AttributionDrift:
    """The inverse of `drift_record`: the drift as `compute_checkpoint_drift` returned it."""
    summary, results = run.info.summary, run.results
    return AttributionDrift(labels=list(summary["labels"]), epochs=list(summary["epochs"]),
                            values=np.asarray(results["values"]), maps=np.asarray(results["maps"]),
                            correlation=np.asarray(results["correlation"]), target=np.asarray(results["target"]),
                            method=run.info.method or "integrated_gradients")
