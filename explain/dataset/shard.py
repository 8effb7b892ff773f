"""One shard of a dataset-wide run: what it does (`ShardJob`), what it gives (`ShardResult`), and
`explain_shard`, the one function every engine (local, Ray actor) runs on a shard."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from explain.attribution import Attribution
from explain.dataset.reading import Dataset
from explain.model import LoadedModel
from explain.progress import ProgressFn


@dataclass(frozen=True)
class ShardJob:
    """What every shard of a run does: the method, its parameters, the target choice.

    ``target``: None (the predicted class), an int (one class for all rows) or
    ``"label"`` (each row's label; the dataset must carry labels). ``params`` may hold a record's
    per-row values (`explain.params.PER_INPUT`: ``{name: [one per dataset row]}``, a re-run's steps);
    each shard is given its own rows' (`explain_shard`).
    """

    method: str
    params: dict[str, Any]
    target: int | str | None = None


@dataclass
class ShardResult:
    """One finished shard: rows ``start:stop`` of the dataset."""

    index: int
    start: int
    stop: int
    attribution: Attribution
    probabilities: np.ndarray  # [n, K]

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)  # [n]


class ShardEngine(Protocol):
    """Where shards run. ``run`` yields results in any order; it reports (done shards, total) to
    ``progress`` after each shard and again, unchanged, between and inside shards, where a
    raising callback (`explain.progress`) stops the run."""

    name: str

    def run(self, dataset: Dataset, shards: list[tuple[int, int]], job: ShardJob,
            progress: ProgressFn | None) -> Iterator[ShardResult]: ...


def explain_shard(model: LoadedModel, inputs: np.ndarray, job: ShardJob, labels: np.ndarray | None,
                  progress: ProgressFn | None = None, *, start: int) -> tuple[Attribution, np.ndarray]:
    """The attribution and class probabilities [n, K] of one shard, the dataset's rows ``start:start + n``
    (``inputs`` [n, ...]; the job's per-row values of those rows, `select_per_input`): what every engine runs."""
    from explain.output.methods import get_method
    from explain.params import select_per_input

    target: Any = job.target
    if target == "label":
        target = labels
    probabilities = model.predict_proba(inputs)  # [n, K]
    params = select_per_input(job.params, slice(start, start + len(inputs)))
    attribution = get_method(job.method).explain(model, inputs, target=target, progress=progress,
                                                 use_cache=False, **params)
    return attribution, probabilities
