"""Checkpoint drift as a job of the queue: the Training page's "Attribution drift", saved as a
``drift`` run (`explain.workspace.run_kinds`).

    params, arrays, title = drift_job(model, name, version, [(file name, bytes), ...], inputs, steps=32)
    record = run_drift_job(model, params, arrays, progress)    # the worker (`service.runners`)
    drift = saved_drift(run)                                   # the run read back: an AttributionDrift

The checkpoints travel as their bytes (read by `evolution.read_checkpoint` in the worker, as the
page reads them); the run keeps the explained inputs with their spec and every checkpoint's maps
and rank correlations (`evolution.compute_checkpoint_drift`), so the page and the Saved runs page
draw the same figures from it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from explain.errors import UsageError
from explain.model import LoadedModel
from explain.progress import ProgressFn
from explain.training.evolution import AttributionDrift, compute_checkpoint_drift, read_checkpoint, sort_checkpoints
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs


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
                 drift: AttributionDrift) -> RunRecord:
    """The ``drift`` run: the inputs with their spec and each checkpoint's maps and correlations."""
    return RunRecord(
        page="drift", model=name, version=version, method=drift.method,
        title=f"Attribution drift of {model.name} over {len(drift.labels)} checkpoints",
        params={"steps": int(steps)}, inputs={"inputs": np.asarray(inputs), **spec_inputs(model.spec)},
        results={"values": drift.values, "maps": drift.maps, "correlation": drift.correlation,
                 "target": np.asarray(drift.target)},
        summary={"labels": list(drift.labels), "epochs": [None if e is None else float(e) for e in drift.epochs],
                 "mean_correlation": [None if np.isnan(c) else float(c) for c in drift.mean_correlation]},
        environment=environment())


def run_drift_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                  progress: ProgressFn | None = None) -> RunRecord:
    """What the worker runs for a ``drift`` job (`drift_job` built it): the checkpoints in training order."""
    checkpoints = sort_checkpoints(
        read_checkpoint(np.asarray(arrays[f"checkpoint/{i}"], dtype=np.uint8).tobytes(), filename=file_name)
        for i, file_name in enumerate(params["checkpoints"]))
    inputs = arrays["inputs"]
    drift = compute_checkpoint_drift(checkpoints, model, inputs, steps=int(params["steps"]), progress=progress)
    return drift_record(params["model"], int(params["version"]), model, inputs, int(params["steps"]), drift)


def saved_drift(run: SavedRun) -> AttributionDrift:
    """The inverse of `drift_record`: the drift as `compute_checkpoint_drift` returned it."""
    summary, results = run.info.summary, run.results
    return AttributionDrift(labels=list(summary["labels"]), epochs=list(summary["epochs"]),
                            values=np.asarray(results["values"]), maps=np.asarray(results["maps"]),
                            correlation=np.asarray(results["correlation"]), target=np.asarray(results["target"]),
                            method=run.info.method or "integrated_gradients")
