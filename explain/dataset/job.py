"""A dataset-wide run as a job of the queue: what ``batch`` and the Dataset page submit
(`dataset_job`), what a worker runs (`run_dataset_job`, registered in `explain.service.runners`)
and the saved run it becomes (`dataset_record`, read back by `saved_dataset`); a saved run asked
again (`dataset_rerun`) and how the two differ (`dataset_differences`).

The job carries the whole dataset as model-ready arrays (``inputs`` [N, ...], ``item_names``
[N], ``labels`` [N] when known), so a worker on another machine needs nothing but the
workspace. The worker publishes the summary so far after each shard (`Jobs.publish_partial`):
every session following the job draws it as the shards finish.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.attribution import merge_step_raising
from explain.dataset.reading import Dataset
from explain.dataset.run import DatasetRun, check_target, dataset_params, explain_dataset, make_engine
from explain.dataset.summary import DatasetSummary, summary_dict
from explain.errors import IncompatibleInput, UsageError
from explain.model import LoadedModel
from explain.params import PER_INPUT
from explain.progress import ProgressFn
from explain.workspace.reruns import as_rerun, max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs


def dataset_job(model: LoadedModel, name: str, version: int, dataset: Dataset, method: str,
                params: dict[str, Any], target: int | str | None, shard_rows: int,
                engine: str = "local", actors: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a dataset run now (a bad one is refused when submitted): the job's params, arrays, title."""
    from explain.dataset.run import ENGINES
    from explain.output.methods import get_method

    if shard_rows < 1:
        raise UsageError("Rows per shard must be at least 1.")
    if engine not in ENGINES:
        raise UsageError(f"Unknown engine {engine!r}. Known: {', '.join(ENGINES)}.")
    explainer = get_method(method)
    reason = explainer.incompatibility(model)
    if reason:
        raise IncompatibleInput(reason)
    check_target(dataset, target)
    given = {k: v for k, v in (params or {}).items() if not isinstance(v, np.ndarray)}
    own = {k: v for k, v in (params or {}).items() if isinstance(v, np.ndarray)}  # background, baseline_array
    dataset_params(model, dataset, method, {**given, **own}, shard_rows)  # unknown parameters refused here
    arrays = {"inputs": dataset.rows(0, len(dataset)), "item_names": np.asarray(dataset.names, dtype=str),
              **{f"param/{k}": v for k, v in own.items()}}
    if dataset.labels is not None:
        arrays["labels"] = np.asarray(dataset.labels)
    job_params = {"model": name, "version": version, "method": explainer.name, "params": given, "target": target,
                  "shard_rows": int(shard_rows), "engine": engine, "actors": actors, "dataset": dataset.name}
    return job_params, arrays, f"{explainer.name} on dataset {dataset.name} ({len(dataset)} rows) of {name}@v{version}"


def job_dataset(arrays: dict[str, np.ndarray], model: LoadedModel, name: str) -> Dataset:
    """The job's dataset, back from its arrays."""
    rows = arrays["inputs"]
    return Dataset(name, model.spec, [str(n) for n in arrays["item_names"]], arrays.get("labels"),
                   lambda start, stop: rows[start:stop])


def run_dataset_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                    progress: ProgressFn, publish: Callable[[dict[str, np.ndarray]], None],
                    model_file: Callable[[], bytes]) -> RunRecord:
    """Every shard of the job's dataset, on the job's engine; the summary so far published after
    each shard; the whole run as a Dataset run. ``model_file()``: the version's bytes (Ray needs them)."""
    dataset = job_dataset(arrays, model, params.get("dataset", "dataset"))
    engine_name = params.get("engine", "local")
    options = {"actors": params["actors"]} if engine_name == "ray" and params.get("actors") else {}
    engine = make_engine(engine_name, model, model_file() if engine_name == "ray" else None, **options)
    run = DatasetRun(model, dataset, params["method"], int(params["shard_rows"]))
    given = {**params.get("params", {}),
             **{k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}}
    recorded = {k.removeprefix(f"{PER_INPUT}/"): v.tolist() for k, v in arrays.items() if k.startswith(f"{PER_INPUT}/")}
    if recorded:  # a re-run: each row as its run computed it (`dataset_rerun`)
        given[PER_INPUT] = recorded
    for shard in explain_dataset(model, dataset, params["method"], given, target=params.get("target"),
                                 shard_rows=int(params["shard_rows"]), engine=engine, progress=progress):
        run.add(shard)
        if not run.complete:
            publish(partial_arrays(run))
    own = {k: v for k, v in arrays.items() if k.startswith("param/")}
    return as_rerun(dataset_record(params["model"], int(params["version"]), model, run, engine_name, params, own), params)


def dataset_record(name: str, version: int, model: LoadedModel, run: DatasetRun, engine: str,
                   params: dict[str, Any], own: dict[str, np.ndarray] | None = None) -> RunRecord:
    """A finished dataset run as a saved run: its ``results`` are exactly ``batch``'s RUN.npz, plus
    ``per_input/<name>`` [rows] for each parameter the method adapts per row (`per_input_params`: the
    steps each row's integrated gradients used, raised or not; what a re-run computes each row with); its ``inputs`` carry the spec (`SavedRun.spec`) and the
    method's array parameters as given (``own``: ``param/<name>``, what a re-run passes again)."""
    arrays = {**run.arrays(), **_per_row_values(run)}
    first = run.finished()[0].attribution
    seconds = run.seconds()
    errors = arrays["completeness_error"]
    summary = {
        "dataset": run.dataset.name, "rows": len(run.dataset), "shards": run.n_shards, "engine": engine,
        "seconds": seconds, "attributions_per_s": len(run.dataset) / seconds if seconds > 0 else None,
        "max_completeness_error": None if np.all(np.isnan(errors)) else float(np.nanmax(errors)),
        "summary": summary_dict(run.summary(), model.spec),
    }
    return RunRecord(
        page="dataset", model=name, version=version, method=run.method,
        title=f"{run.method} on dataset {run.dataset.name} ({len(run.dataset)} rows) of {model.name}",
        params={run.method: {**{k: v for k, v in first.params.items()
                                if not isinstance(v, np.ndarray) and k not in (PER_INPUT, "step_raising")},
                             # what IG's tolerance did over every shard, not the first one's
                             **_step_raising(run)},
                "shard_rows": run.shard_rows, "engine": engine, "target": params.get("target")},
        target=params.get("target") if isinstance(params.get("target"), int) else None,
        inputs={"inputs": run.dataset.rows(0, len(run.dataset)), "item_names": arrays["item_names"],
                **({"labels": arrays["labels"]} if "labels" in arrays else {}), **spec_inputs(model.spec),
                **(own or {})},
        results=arrays, summary=summary,
        environment=environment(device=first.device, precision=first.precision))


def _step_raising(run: DatasetRun) -> dict[str, Any]:
    """``{"step_raising": ...}`` merged over the finished shards (`merge_step_raising`), or {} if none raised."""
    merged = merge_step_raising([r.attribution.params.get("step_raising") for r in run.finished()])
    return {} if merged is None else {"step_raising": merged}


def _per_row_values(run: DatasetRun) -> dict[str, np.ndarray]:
    """``per_input/<name>``: each finished row's value of each parameter the method adapts per input
    (`per_input_params`) as its shard recorded it (`explain.attribution.Attribution`), in the order of
    ``rows``; the asked value where a shard adapted nothing. Empty for a method that adapts none."""
    from explain.output.methods import get_method

    attrs = [r.attribution for r in run.finished()]
    names = [name for name in get_method(run.method).per_input_params if name in attrs[0].params]
    return {f"{PER_INPUT}/{name}": np.concatenate([
        np.asarray((a.params.get(PER_INPUT) or {}).get(name, [a.params.get(name)] * len(a))) for a in attrs])
        for name in names}


def dataset_rerun(run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved dataset run asked again as a ``dataset`` job (its params, arrays and title): the same rows
    (names and labels back in dataset order), method with its recorded parameters and array parameters,
    target, shards and engine, computed afresh (every shard explains without the cache); its run names
    this one (``rerun_of``). Each row is computed with the values it used (``per_input/<name>``: the steps its
    integrated gradients used), in dataset order, as an Output run's re-run does: nothing is raised again, so
    a changed step budget or a slower machine gives the same maps."""
    info, results = run.info, run.results
    inputs = np.asarray(run.inputs["inputs"])
    order = np.asarray(results["rows"], dtype=np.int64)  # the saved per-row arrays' rows, in dataset order
    names = np.empty(len(inputs), dtype=np.asarray(results["item_names"]).dtype)
    names[order] = results["item_names"]
    arrays = {"inputs": inputs, "item_names": names,
              **{k: np.asarray(v) for k, v in run.inputs.items() if k.startswith("param/")}}
    for key in (k for k in results if k.startswith(f"{PER_INPUT}/")):  # a run saved before has none: raised again
        values = np.empty(len(inputs), dtype=np.asarray(results[key]).dtype)
        values[order] = results[key]
        arrays[key] = values
    if "labels" in results:
        labels = np.empty(len(inputs), dtype=np.asarray(results["labels"]).dtype)
        labels[order] = results["labels"]
        arrays["labels"] = labels
    recorded = {k: v for k, v in info.params.get(info.method, {}).items() if k != "step_raising"}
    params = {"model": info.model, "version": int(info.version), "method": info.method, "params": recorded,
              "target": info.params.get("target"), "shard_rows": int(info.params["shard_rows"]),
              "engine": info.params.get("engine", "local"), "actors": None, "dataset": info.summary["dataset"],
              "rerun_of": info.id}
    return params, arrays, f"Re-run of {info.id}: {info.title}"


def dataset_differences(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, `dataset_rerun`'s run) differs from the dataset run it repeats, as an Output
    run's method row (`explain.workspace.records.output_differences`): the largest absolute difference of the
    maps row by row (also relative to the saved maps' largest value), both largest completeness errors and
    whether every row explained the same class."""
    def by_row(run: SavedRun, key: str) -> np.ndarray:
        return np.asarray(run.results[key])[np.argsort(run.results["rows"], kind="stable")]

    diff = max_difference(by_row(saved, "values"), by_row(fresh, "values"))
    same = np.array_equal(by_row(saved, "targets"), by_row(fresh, "targets"))
    return [{"method": saved.info.method, "max |difference|": diff,
             "relative to the map's max": relative(diff, saved.results["values"]),
             "saved completeness error": saved.info.summary.get("max_completeness_error"),
             "now completeness error": fresh.info.summary.get("max_completeness_error"), "same targets": bool(same)}]


@dataclass(frozen=True)
class DatasetView:
    """What the Dataset page draws, from a finished run or a running job's partial summary."""

    summary: DatasetSummary
    values: np.ndarray | None  # [n, ...] attributions of the finished rows (None while running)
    inputs: np.ndarray | None  # [n, ...] their inputs
    seconds: float


def partial_arrays(run: DatasetRun) -> dict[str, np.ndarray]:
    """What a worker publishes after each shard (`partial_view` reads it back): the summary so far
    and ``summary_progress`` = rows done, rows, shards done, shards, seconds."""
    summary = run.summary()
    return {**summary.to_npz_dict(), "summary_progress": np.asarray(
        [summary.rows, len(run.dataset), len(run.results), run.n_shards, run.seconds()])}


def partial_view(arrays: dict[str, np.ndarray], modality: str) -> DatasetView:
    rows, total, done, shards, seconds = arrays["summary_progress"].tolist()
    return DatasetView(DatasetSummary.from_npz_dict(arrays, modality, int(rows), int(total), int(done), int(shards)),
                       None, None, float(seconds))


def saved_dataset(run: SavedRun, modality: str | None = None) -> DatasetView:
    """A saved dataset run as the page draws it (rows in dataset order, as saved); ``modality``
    defaults to the run's stored spec's (`SavedRun.spec`)."""
    if modality is None:
        if run.spec is None:
            raise UsageError(f"Run {run.info.id} was saved without its spec: pass the model's modality.")
        modality = run.spec.modality
    info, results = run.info, run.results
    n, shards = int(info.summary["rows"]), int(info.summary["shards"])
    return DatasetView(DatasetSummary.from_npz_dict(results, modality, n, n, shards, shards), results["values"],
                       run.inputs["inputs"][results["rows"]], float(info.summary.get("seconds") or 0.0))
