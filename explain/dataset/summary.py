"""Dataset-wide summaries, built incrementally as shards finish.

Each finished shard is reduced to a `ShardStats` (sums and counts, float64); a
`SummaryAccumulator` adds them up and gives a `DatasetSummary` at any moment:
partial after each shard, final after the last. Shards are folded in shard
order whatever order they finish in (a Ray cluster finishes them out of order),
so the summary of a set of finished shards is the same number on every engine.

The summaries, per modality:
- tabular: mean |attribution| per feature (the beeswarm is drawn from the rows
  themselves, `explain.viz.attribution.tabular_summary_figure`);
- image: class-mean maps: the mean attribution map (channels summed) of the rows
  explained for each class;
- text: top tokens per class: the tokens whose summed attribution toward the class
  is largest over the dataset (padding left out).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explain.attribution import Attribution
from explain.inputs.tabular import feature_names
from explain.inputs.text import detokenize, padding_mask
from explain.spec import InputSpec

TOP_TOKENS = 10
_KEY_BASE = 1 << 32  # token key = class * _KEY_BASE + token id


@dataclass(frozen=True)
class TokenScore:
    """One token's attribution toward one class, over every occurrence in the dataset."""

    token: str
    total: float  # summed attribution
    count: int  # occurrences

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class DatasetSummary:
    """Global summaries of the rows explained so far.

    Attributes:
        modality: the model's modality.
        rows, total_rows: rows summarised so far / in the dataset.
        shards_done, total_shards: shards summarised so far / in the run.
        mean_abs: mean |attribution| per position ([F] tabular, [H, W] image with
            channels summed first, [L] text).
        class_counts: [K] rows explained for each target class.
        class_means: [K, *positions] mean attribution per target class (NaN for a class
            no row was explained for): the class-mean maps of an image model.
        top_tokens: text models: per class, up to `TOP_TOKENS` tokens ranked by summed
            attribution toward it (largest first); empty for other modalities.
    """

    modality: str
    rows: int
    total_rows: int
    shards_done: int
    total_shards: int
    mean_abs: np.ndarray
    class_counts: np.ndarray
    class_means: np.ndarray
    top_tokens: list[list[TokenScore]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.shards_done == self.total_shards

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """``summary_*`` arrays for ``np.savez`` (token strings as a unicode array, no pickles)."""
        out = {
            "summary_mean_abs": self.mean_abs,
            "summary_class_counts": self.class_counts,
            "summary_class_means": self.class_means,
        }
        if self.modality == "text":
            width = max([len(t) for t in self.top_tokens] + [1])
            tokens = np.full((len(self.top_tokens), width), "", dtype=object)
            scores = np.full((len(self.top_tokens), width), np.nan)
            counts = np.zeros((len(self.top_tokens), width), dtype=np.int64)
            for k, row in enumerate(self.top_tokens):
                tokens[k, : len(row)] = [t.token for t in row]
                scores[k, : len(row)] = [t.total for t in row]
                counts[k, : len(row)] = [t.count for t in row]
            out["summary_top_tokens"] = tokens.astype(str)
            out["summary_top_token_totals"] = scores
            out["summary_top_token_counts"] = counts
        return out

    @classmethod
    def from_npz_dict(cls, arrays: dict[str, np.ndarray], modality: str, rows: int, total_rows: int,
                      shards_done: int, total_shards: int) -> DatasetSummary:
        """The inverse of `to_npz_dict` (a saved run's or a running job's summary)."""
        top: list[list[TokenScore]] = []
        if "summary_top_tokens" in arrays:
            counts = arrays.get("summary_top_token_counts")
            for k, (names, totals) in enumerate(zip(arrays["summary_top_tokens"], arrays["summary_top_token_totals"])):
                top.append([TokenScore(str(t), float(v), int(counts[k, j]) if counts is not None else 0)
                            for j, (t, v) in enumerate(zip(names, totals)) if str(t) != "" and np.isfinite(v)])
        return cls(modality, rows, total_rows, shards_done, total_shards, arrays["summary_mean_abs"],
                   arrays["summary_class_counts"], arrays["summary_class_means"], top)


@dataclass
class ShardStats:
    """One shard reduced to sums and counts (float64), ready to add up."""

    rows: int
    sum_abs: np.ndarray  # [*P]
    class_sum: np.ndarray  # [K, *P]
    class_count: np.ndarray  # [K]
    token_keys: np.ndarray  # [M] class * 2**32 + token id (text), else empty
    token_sum: np.ndarray  # [M]
    token_count: np.ndarray  # [M]


def position_values(attribution: Attribution, modality: str) -> np.ndarray:
    """[N, *P] float64: one number per position (image channels summed, as the maps show them)."""
    values = np.asarray(attribution.values, dtype=np.float64)
    return values.sum(axis=1) if modality == "image" else values  # [N, C, H, W] -> [N, H, W]


def shard_stats(attribution: Attribution, spec: InputSpec, num_classes: int) -> ShardStats:
    """Reduce one shard's attribution."""
    pos = position_values(attribution, spec.modality)  # [n, *P]
    target = np.asarray(attribution.target, np.int64)  # [n]
    class_sum = np.zeros((num_classes, *pos.shape[1:]))
    np.add.at(class_sum, target, pos)
    keys = np.zeros(0, np.int64)
    sums = np.zeros(0)
    counts = np.zeros(0, np.int64)
    if spec.modality == "text":
        ids = np.asarray(attribution.inputs, np.int64)  # [n, L]
        real = ~padding_mask(ids, spec)
        flat_keys = (target[:, None] * _KEY_BASE + ids)[real]
        keys, inverse, counts = np.unique(flat_keys, return_inverse=True, return_counts=True)
        sums = np.zeros(len(keys))
        np.add.at(sums, inverse, pos[real])
    return ShardStats(
        rows=len(target), sum_abs=np.abs(pos).sum(axis=0), class_sum=class_sum,
        class_count=np.bincount(target, minlength=num_classes)[:num_classes].astype(np.int64),
        token_keys=keys, token_sum=sums, token_count=counts.astype(np.int64),
    )


class SummaryAccumulator:
    """Adds `ShardStats` in shard order; `summary` at any time."""

    def __init__(self, spec: InputSpec, num_classes: int, total_rows: int, total_shards: int):
        self.spec = spec
        self.num_classes = num_classes
        self.total_rows = total_rows
        self.total_shards = total_shards
        self._next = 0  # shards 0.._next-1 are folded into _folded
        self._pending: dict[int, ShardStats] = {}
        self._folded: _Totals | None = None

    def add(self, index: int, stats: ShardStats) -> None:
        self._pending[index] = stats
        while self._next in self._pending:
            self._folded = _Totals.fold(self._folded, self._pending.pop(self._next))
            self._next += 1

    @property
    def shards_done(self) -> int:
        return self._next + len(self._pending)

    def summary(self) -> DatasetSummary:
        """The summary of every shard added so far (those still out of order added last, in order)."""
        totals = self._folded.copy() if self._folded is not None else None
        for index in sorted(self._pending):
            totals = _Totals.fold(totals, self._pending[index])
        if totals is None:
            raise ValueError("no shard has finished yet")
        counts = totals.class_count
        shape = (-1,) + (1,) * (totals.class_sum.ndim - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            class_means = totals.class_sum / counts.reshape(shape)
        class_means[counts == 0] = np.nan
        return DatasetSummary(
            modality=self.spec.modality, rows=totals.rows, total_rows=self.total_rows,
            shards_done=self.shards_done, total_shards=self.total_shards,
            mean_abs=totals.sum_abs / max(totals.rows, 1), class_counts=counts.copy(), class_means=class_means,
            top_tokens=self._top_tokens(totals) if self.spec.modality == "text" else [],
        )

    def _top_tokens(self, totals: _Totals) -> list[list[TokenScore]]:
        by_class: list[list[tuple[float, int, int]]] = [[] for _ in range(self.num_classes)]
        for key, (total, count) in totals.tokens.items():
            k, token_id = divmod(key, _KEY_BASE)
            by_class[k].append((total, count, token_id))
        out = []
        for rows in by_class:
            rows.sort(key=lambda r: (-r[0], r[2]))  # largest total first, ties by token id
            top = rows[:TOP_TOKENS]
            names = detokenize([r[2] for r in top], self.spec)
            out.append([TokenScore(name, float(total), int(count)) for name, (total, count, _) in zip(names, top)])
        return out


@dataclass
class _Totals:
    rows: int
    sum_abs: np.ndarray
    class_sum: np.ndarray
    class_count: np.ndarray
    tokens: dict[int, tuple[float, int]]

    def copy(self) -> _Totals:
        return _Totals(self.rows, self.sum_abs.copy(), self.class_sum.copy(), self.class_count.copy(), dict(self.tokens))

    @staticmethod
    def fold(totals: _Totals | None, stats: ShardStats) -> _Totals:
        if totals is None:
            totals = _Totals(0, np.zeros_like(stats.sum_abs), np.zeros_like(stats.class_sum),
                             np.zeros_like(stats.class_count), {})
        totals.rows += stats.rows
        totals.sum_abs += stats.sum_abs
        totals.class_sum += stats.class_sum
        totals.class_count += stats.class_count
        for key, total, count in zip(stats.token_keys.tolist(), stats.token_sum.tolist(), stats.token_count.tolist()):
            old_total, old_count = totals.tokens.get(key, (0.0, 0))
            totals.tokens[key] = (old_total + total, old_count + count)
        return totals


def summary_dict(summary: DatasetSummary, spec: InputSpec, top: int = 10) -> dict:
    """The summary as plain JSON values, named: the CLI's ``summary`` and an API's answer.

    ``class_counts`` by class name; tabular: the ``top`` features by mean |attribution|
    (``mean_abs``, largest first); text: ``top_tokens`` per class (token, total, count).
    """
    out: dict = {
        "rows": summary.rows, "shards": summary.shards_done,
        "class_counts": {spec.class_name(k): int(c) for k, c in enumerate(summary.class_counts)},
    }
    if summary.modality == "tabular":
        names = feature_names(spec)
        order = np.argsort(-summary.mean_abs)[:top]
        out["mean_abs"] = {names[i]: float(summary.mean_abs[i]) for i in order}
    elif summary.modality == "image":
        out["mean_abs_total"] = float(summary.mean_abs.sum())
    else:
        out["top_tokens"] = {spec.class_name(k): [[t.token, t.total, t.count] for t in row[:top]]
                             for k, row in enumerate(summary.top_tokens) if row}
    return out
