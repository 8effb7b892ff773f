"""Explain a whole dataset shard by shard: `explain_dataset`, the function a CLI, a page or a queue worker calls.

    model = load_model("model.safetensors")
    data = read_dataset("rows.csv", model.spec)
    run = DatasetRun(model, data, "integrated_gradients")
    for shard in explain_dataset(model, data, "integrated_gradients", progress=bar):  # bar raises Cancelled to stop
        run.add(shard)
        show(run.summary())          # partial summaries, streamed
    np.savez(out, **run.arrays())

Where the shards run is an *engine* (the CLI's ``--engine``): `LocalEngine` in this
process, or `explain.dataset.ray_engine.RayEngine` in Ray actors that keep the model
loaded. Not to be confused with `explain.output.engine`, the batching inside one shard.
Both call `explain_shard`, so a shard is the same numbers wherever it runs.

Dataset-wide references: a ``mean`` baseline or background fallback means the mean of the
whole dataset, not of each shard (`dataset_params`), so results do not depend on the
shard size. Noise-drawing methods (SmoothGrad, GradientSHAP) seed their draws by a row's
position in its shard, so for those the shard size is part of the result.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from explain.dataset.reading import DEFAULT_SHARD_ROWS, Dataset
from explain.dataset.shard import ShardEngine, ShardJob, ShardResult, explain_shard
from explain.dataset.summary import DatasetSummary, SummaryAccumulator, shard_stats
from explain.errors import UsageError
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress

ENGINES = ("local", "ray")


class LocalEngine:
    """Shards run one after the other in this process, on the model already loaded."""

    name = "local"

    def __init__(self, model: LoadedModel):
        self.model = model

    def run(self, dataset: Dataset, shards: list[tuple[int, int]], job: ShardJob,
            progress: ProgressFn | None) -> Iterator[ShardResult]:
        for index, (start, stop) in enumerate(shards):
            def heartbeat(_done: int = 0, _total: int = 0, index: int = index) -> None:  # a cancel point, mid-shard too
                report_progress(progress, index, len(shards))

            heartbeat()
            labels = dataset.labels[start:stop] if dataset.labels is not None else None
            attribution, probabilities = explain_shard(self.model, dataset.rows(start, stop), job, labels, heartbeat,
                                                       start=start)
            report_progress(progress, index + 1, len(shards))
            yield ShardResult(index, start, stop, attribution, probabilities)


def dataset_params(model: LoadedModel, dataset: Dataset, method: str, params: dict[str, Any] | None,
                   shard_rows: int = DEFAULT_SHARD_ROWS) -> dict[str, Any]:
    """The parameters every shard gets: ``params``, plus the dataset's mean row as ``background``
    when a parameter asks for a ``mean`` reference and no background was given (so the mean is the
    dataset's, not each shard's). A record's per-row values (``params[PER_INPUT]``, one per dataset
    row: a re-run's steps) are checked here and cut per shard by `explain_shard`.
    """
    from explain.output.methods import get_method
    from explain.params import PER_INPUT, resolve_params

    explainer = get_method(method)
    given = dict(params or {})
    resolved = resolve_params(explainer.params, given)  # refuses unknown parameters here, before any shard
    fixed = explainer.check_per_input(given.pop(PER_INPUT, None), len(dataset))  # one per row, or refused now
    if fixed:
        given[PER_INPUT] = fixed
    wants_mean = any(isinstance(v, str) and v == "mean" for k, v in resolved.items() if k != "background")
    if "background" in explainer.params and given.get("background") is None and wants_mean and model.modality != "text":
        given["background"] = dataset.mean_row(shard_rows)
    return given


def check_target(dataset: Dataset, target: int | str | None) -> None:
    if target == "label" and dataset.labels is None:
        raise UsageError(f"{dataset.name} carries no labels, so the target cannot be 'label'.",
                         "Use the predicted class or a class index.")


def explain_dataset(
    model: LoadedModel,
    dataset: Dataset,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    target: int | str | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    engine: ShardEngine | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[ShardResult]:
    """Explain every row of ``dataset``, yielding each shard as it finishes (in any order).

    Args:
        model: the loaded model (the local engine runs it; every engine checks against it).
        method, params: a registered method and its parameters (as ``Explainer.explain`` takes them).
        target: None (predicted class), a class index, or ``"label"``.
        shard_rows: rows per shard.
        engine: `LocalEngine` (default) or `explain.dataset.ray_engine.RayEngine`.
        progress: called with (done shards, total shards) after each shard, and again with the
            same counts between and inside shards; raising `Cancelled` in it stops the run
            (`explain.progress`: the one cancel).

    Raises:
        UsageError: unknown method or parameters, a ``label`` target without labels.
        IncompatibleInput: the method does not fit the model.
        Cancelled: (or anything else) raised by ``progress``.
    """
    from explain.output.methods import get_method

    reason = get_method(method).incompatibility(model)
    if reason:
        from explain.errors import IncompatibleInput

        raise IncompatibleInput(reason)
    check_target(dataset, target)
    job = ShardJob(method, dataset_params(model, dataset, method, params, shard_rows), target)
    shards = dataset.shards(shard_rows)
    engine = engine or LocalEngine(model)
    with contextlib.closing(engine.run(dataset, shards, job, progress)) as results:  # closed now, not by the GC
        yield from results


class DatasetRun:
    """Collects shard results: the partial or final `DatasetSummary` and the run's arrays."""

    def __init__(self, model: LoadedModel, dataset: Dataset, method: str, shard_rows: int = DEFAULT_SHARD_ROWS):
        self.spec = model.spec
        self.dataset = dataset
        self.method = method
        self.shard_rows = shard_rows
        self.num_classes = int(model.predict_logits(dataset.rows(0, 1)).shape[1])
        self.n_shards = len(dataset.shards(shard_rows))
        self.results: dict[int, ShardResult] = {}
        self.accumulator = SummaryAccumulator(model.spec, self.num_classes, len(dataset), self.n_shards)
        self.started = time.perf_counter()

    def add(self, result: ShardResult) -> None:
        self.results[result.index] = result
        self.accumulator.add(result.index, shard_stats(result.attribution, self.spec, self.num_classes))

    @property
    def complete(self) -> bool:
        return len(self.results) == self.n_shards

    def summary(self) -> DatasetSummary:
        return self.accumulator.summary()

    def finished(self) -> list[ShardResult]:
        """The finished shards in dataset order."""
        return [self.results[i] for i in sorted(self.results)]

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything a RUN.npz holds: per-row arrays of the finished shards in dataset order
        (``values``, ``targets``, ``predictions``, ``probabilities``, ``completeness_error``,
        ``base_value``, ``output``, ``rows``, ``labels`` when known) and the ``summary_*`` arrays."""
        done = self.finished()
        attrs = [r.attribution for r in done]
        rows = np.concatenate([np.arange(r.start, r.stop) for r in done])
        out = {
            "values": np.concatenate([a.values for a in attrs]),
            "targets": np.concatenate([a.target for a in attrs]),
            "predictions": np.concatenate([r.predictions for r in done]),
            "probabilities": np.concatenate([r.probabilities for r in done]),
            "completeness_error": np.concatenate([a.completeness_error for a in attrs]),
            "base_value": np.concatenate([a.base_value for a in attrs]),
            "output": np.concatenate([a.output for a in attrs]),
            "rows": rows,
            "item_names": np.asarray([self.dataset.names[i] for i in rows], dtype=str),
        }
        if self.dataset.labels is not None:
            out["labels"] = self.dataset.labels[rows]
        out.update(self.summary().to_npz_dict())
        return out

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def make_engine(name: str, model: LoadedModel, model_file: Any = None, **options: Any) -> ShardEngine:
    """``local`` or ``ray`` (`explain.dataset.ray_engine.RayEngine`, which needs the model's file).

    Raises:
        UsageError: an unknown engine name, or ``ray`` without the model's file.
    """
    if name == "local":
        return LocalEngine(model)
    if name == "ray":
        from explain.dataset.ray_engine import RayEngine

        if model_file is None:
            raise UsageError("The ray engine needs the model's file to load it in its actors.")
        return RayEngine(model, model_file, **options)
    raise UsageError(f"Unknown engine {name!r}. Known: {', '.join(ENGINES)}.")
