"""What crosses the boundary between the server and a model process, and how it is checked.

Arrays travel as raw bytes after a description (dtype from `WIRE_DTYPES`, shape),
which the reader checks against its budget before it reads a byte. A ``call``'s
result is a JSON tree (`encode_result`): plain values, lists, tuples, dicts,
arrays and tensors (by index into the arrays that follow), enums and dataclasses
of Glassbox's result types (`RESULT_MODULES`), rebuilt in the server through their
constructors (`decode_result`). Nothing is unpickled on the server's side: the
child is untrusted, and a pickle's allowed constructors (numpy's included) can
allocate whatever a tiny blob asks for.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import math
from typing import Any

import numpy as np
import torch

from explain.errors import InputRefused

#: dtypes an array may have on the wire (name -> numpy dtype).
WIRE_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
               "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
#: Modules whose dataclasses and enums a result may hold (the library's result types).
RESULT_MODULES = ("explain.attribution", "explain.finding", "explain.spec", "explain.structure.",
                  "explain.output.layer_attribution", "explain.output.layer_importance", "explain.output.metrics.base",
                  "explain.generation.")
#: Deepest nesting of a result tree.
MAX_DEPTH = 32


class WireError(InputRefused):
    """A model process sent something the protocol does not allow (it is stopped)."""


def to_wire(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """A C-contiguous numpy array with a wire dtype (bfloat16 as float32)."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        t = t.cpu().numpy()
    a = np.ascontiguousarray(t)
    if a.dtype.name not in WIRE_DTYPES:
        raise TypeError(f"an array of {a.dtype} cannot be sent")
    return a


def describe(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": list(a.shape)}


def check_meta(meta: Any, budget: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """dtype, shape and byte count of an array a child announces, all checked (within ``budget`` bytes).

    Raises:
        WireError: an unknown dtype, an impossible shape, or more bytes than the budget.
    """
    if not isinstance(meta, dict) or meta.get("dtype") not in WIRE_DTYPES:
        raise WireError("The model process sent an array of an unknown type.")
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise WireError("The model process sent an array of an impossible shape.")
    dtype = np.dtype(WIRE_DTYPES[meta["dtype"]])
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > budget:
        raise WireError("The model process sent more data than a reply may hold.")
    return dtype, tuple(shape), nbytes


# --------------------------------------------------------------------------
# results of a ``call``
# --------------------------------------------------------------------------
def encode_result(value: Any) -> tuple[Any, list[np.ndarray]]:
    """(JSON tree, arrays) for ``value`` (the child's side).

    Raises:
        TypeError: a value of a type the wire does not carry.
    """
    arrays: list[np.ndarray] = []

    def enc(v: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise TypeError("the result is nested too deeply")
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__f": repr(v)}
        if isinstance(v, np.generic):
            return enc(v.item(), depth)
        if isinstance(v, (torch.Tensor, np.ndarray)):
            arrays.append(to_wire(v))
            return {"__t" if isinstance(v, torch.Tensor) else "__a": len(arrays) - 1}
        if isinstance(v, list):
            return [enc(x, depth + 1) for x in v]
        if isinstance(v, tuple):
            return {"__tuple": [enc(x, depth + 1) for x in v]}
        if isinstance(v, (set, frozenset)):
            return {"__set": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            return {"__dict": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if isinstance(v, enum.Enum):
            return {"__enum": _name(type(v)), "value": enc(v.value, depth + 1)}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            fields = {f.name: enc(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v) if f.init}
            return {"__dc": _name(type(v)), "fields": fields}
        raise TypeError(f"a {type(v).__name__} cannot be sent back")

    return enc(value, 0), arrays


def decode_result(tree: Any, arrays: list[np.ndarray]) -> Any:
    """The value `encode_result` described, rebuilt from checked parts only (the server's side).

    Raises:
        WireError: anything the encoder does not make: unknown markers, classes outside
            `RESULT_MODULES`, bad array indices, too deep a tree.
    """

    def dec(v: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("The model process sent a result nested too deeply.")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [dec(x, depth + 1) for x in v]
        if not isinstance(v, dict) or len(v) > 2:
            raise WireError("The model process sent a malformed result.")
        if "__t" in v or "__a" in v:
            index = v.get("__t", v.get("__a"))
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(arrays):
                raise WireError("The model process sent a malformed result.")
            return torch.from_numpy(arrays[index]) if "__t" in v else arrays[index]
        if "__f" in v and v["__f"] in ("nan", "inf", "-inf"):
            return float(v["__f"])
        if isinstance(v.get("__tuple"), list):
            return tuple(dec(x, depth + 1) for x in v["__tuple"])
        if isinstance(v.get("__set"), list):
            return {_hashable(dec(x, depth + 1)) for x in v["__set"]}
        if isinstance(v.get("__dict"), list):
            pairs = v["__dict"]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise WireError("The model process sent a malformed result.")
            return {_hashable(dec(k, depth + 1)): dec(x, depth + 1) for k, x in pairs}
        if "__enum" in v:
            cls = _result_class(v["__enum"], enum.Enum)
            try:
                return cls(dec(v.get("value"), depth + 1))
            except (ValueError, TypeError):
                raise WireError("The model process sent an unknown value.") from None
        if "__dc" in v and isinstance(v.get("fields"), dict):
            cls = _result_class(v["__dc"], None)
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            fields = {k: dec(x, depth + 1) for k, x in v["fields"].items() if k in known}
            try:
                return cls(**fields)  # through its constructor and its checks
            except Exception as exc:  # noqa: BLE001 - whatever a bad field makes the constructor raise
                raise WireError(f"The model process sent an invalid {cls.__name__} ({type(exc).__name__}).") from None
        raise WireError("The model process sent a malformed result.")

    return dec(tree, 0)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        raise WireError("The model process sent an unhashable key.") from None
    return value


def _result_class(name: Any, base: type | None) -> type:
    """A dataclass or enum of a module in `RESULT_MODULES`, by ``module:qualname``."""
    if not isinstance(name, str) or name.count(":") != 1:
        raise WireError("The model process sent a malformed result.")
    module_name, qualname = name.split(":")
    if not any(module_name == m or (m.endswith(".") and module_name.startswith(m)) for m in RESULT_MODULES):
        raise WireError(f"The model process sent a {qualname[:40]}, which is not a result type.")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise WireError("The model process sent an unknown result type.") from None
    ok = isinstance(cls, type) and cls.__module__ == module_name and (
        issubclass(cls, base) if base is not None else dataclasses.is_dataclass(cls))
    if not ok:
        raise WireError("The model process sent an unknown result type.")
    return cls
