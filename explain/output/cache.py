"""A bounded LRU cache of attribution results.

Keyed by (model sha256, model object, inputs hash, method, params, target, and how far integrated
gradients' tolerance may raise steps: ``GLASSBOX_IG_STEP_BUDGET`` / ``GLASSBOX_IG_STEP_SECONDS``):
asking twice for the same explanation (a page rerun, the report after the
page) returns the stored result instead of recomputing it. The model
object's identity is part of the key so that two different in-memory models
that share a placeholder digest never collide.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from explain.attribution import Attribution
from explain.config import ig_step_budget, ig_step_seconds
from explain.digest import digest_array

MAX_ENTRIES = 64
MAX_BYTES = 512 << 20


def _freeze(value: Any) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("array", digest_array(value))
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value if isinstance(value, Hashable) else repr(value)


def make_key(model: Any, inputs: np.ndarray, method: str, params: dict[str, Any], target: Any) -> Hashable:
    """The cache key of one explanation request."""
    target_key = None if target is None else _freeze(np.asarray(target))
    return (model.sha256, id(model.module), digest_array(inputs), method, _freeze(params), target_key,
            ig_step_budget(), ig_step_seconds())  # what IG's tolerance may raise its steps to: another result


def _result_bytes(result: Attribution) -> int:
    return int(sum(np.asarray(a).nbytes for a in result.to_npz_dict().values() if a is not None))


class AttributionCache:
    """Least-recently-used results, bounded by entry count and bytes.

    Holds `Attribution`s by default; ``size_of`` sizes other results (the quality
    metrics' `explain.output.metrics.base.METRIC_CACHE` holds `MetricResult`s).

    Results are copied on the way in and out, so callers may modify what they
    get without corrupting the cache.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 size_of: Callable[[Any], int] | None = None):
        self.size_of = size_of or _result_bytes  # bytes of one stored result
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return copy.deepcopy(item[0])

    def put(self, key: Hashable, result: Any) -> None:
        size = self.size_of(result)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (copy.deepcopy(result), size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: the process-wide cache `Explainer.explain` uses.
ATTRIBUTION_CACHE = AttributionCache()
