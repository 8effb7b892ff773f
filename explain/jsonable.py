"""Plain JSON values from what Glassbox computes: the one conversion (CLI output, saved runs, the API)."""
from __future__ import annotations

import numpy as np


def to_json_safe(obj):
    """Plain JSON values: arrays to lists, NaN/inf to null, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def count_values(value) -> int:
    """How many JSON values ``value`` holds, itself included (no recursion: a document may nest deep)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, (dict, list)):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return count
