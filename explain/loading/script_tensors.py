"""A TorchScript archive's weights as data: read by name, and written back with other values.

A training run that saves ``torch.jit.script(model)`` each epoch, or a TorchScript model whose
checkpoints are plain state dicts, needs the archive's tensors without its graph. The module
object's pickle (``<root>/data.pkl``) is read by an unpickler that builds only stand-ins: a
``__torch__`` class becomes a plain record of its attributes, a tensor a `TensorRef` to its storage
member (``<root>/data/<key>``); any other global is refused. Nothing of the archive's code is
imported or run here; the graph itself is only ever opened in its model process.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from explain.errors import CorruptFile, IncompatibleInput, UnsafeFile, one_line
from explain.loading.script_check import MAX_PICKLE_BYTES
from explain.loading.source import Archive, find_member, more_values_than_bytes, open_archive

_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
           "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
           "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
           "BoolStorage": torch.bool}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor of the archive lives: its storage member, dtype, offset, shape and strides (elements)."""

    key: str
    dtype: torch.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Module:
    """A ``__torch__`` object's stand-in: its attributes, as the pickle's BUILD gives them."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


#: bounds on the module tree a data.pkl may describe: its pickle is linear in its bytes, a walk of a shared
#: module (a memo reference) once per path is not (40 levels of two references to the level below: 2**40)
_MAX_ATTRIBUTES = 2**20
_MAX_DEPTH = 500
_MAX_DIMS = 64  # torch's own limit on a tensor's dimensions


def _rebuild_tensor(storage: tuple, offset: int, size: tuple, stride: tuple, *rest: Any) -> TensorRef:
    key, dtype = storage
    ref = TensorRef(key, dtype, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    if len(ref.size) > _MAX_DIMS or len(ref.stride) != len(ref.size) or any(
            abs(n) >= 2**62 for n in (ref.offset, *ref.size, *ref.stride)):
        raise ValueError("a tensor's shape is not one torch can hold")
    return ref


class _Reader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _Module
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter"):
            return _rebuild_tensor if name != "_rebuild_parameter" else (lambda data, *rest: data)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        raise UnsafeFile(f"The TorchScript file's data.pkl references {module}.{name}; its weights cannot be read "
                         "as data.", "Save each checkpoint's state_dict with torch.save instead.")

    def persistent_load(self, pid: Any) -> tuple[str, torch.dtype]:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise CorruptFile("The TorchScript file's data.pkl names a storage it does not describe.")
        return str(pid[2]), pid[1]


def _walk(root: Any) -> dict[str, TensorRef]:
    """The tensors under ``root`` by dotted name, walked without recursion and within `_MAX_ATTRIBUTES` /
    `_MAX_DEPTH` (a module that holds itself, or shared by many paths, is refused, not walked forever)."""
    out: dict[str, TensorRef] = {}
    stack = [(root, "", 0)]
    steps = 0
    while stack:
        obj, prefix, depth = stack.pop()
        steps += 1
        if steps > _MAX_ATTRIBUTES or depth > _MAX_DEPTH:
            raise CorruptFile(f"The TorchScript file's data.pkl describes a module tree over {_MAX_ATTRIBUTES} "
                              f"attributes or {_MAX_DEPTH} levels deep (a module holding itself?).")
        if isinstance(obj, TensorRef):
            out[prefix] = obj
        elif isinstance(obj, _Module):
            stack.extend((value, f"{prefix}.{name}" if prefix else str(name), depth + 1)
                         for name, value in reversed(obj.state.items()))
    return out


def _root(archive: Archive) -> str:
    member = find_member(archive.names, "data.pkl")
    if member is None:
        raise CorruptFile("The TorchScript file has no data.pkl.")
    return member[: -len("data.pkl")]


def tensor_refs(archive: Archive) -> dict[str, TensorRef]:
    """Every tensor attribute of the archive's module tree by its state-dict name (``body.0.weight``).

    Raises:
        UnsafeFile: the pickle names a global that is not a module class or a tensor helper.
        CorruptFile: a damaged pickle.
    """
    root = _root(archive)
    raw = archive.read(root + "data.pkl", MAX_PICKLE_BYTES)
    try:
        obj = _Reader(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptFile(f"The TorchScript file's data.pkl is damaged ({type(exc).__name__}).") from None
    return _walk(obj)


def read_script_state(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A TorchScript archive's tensors by state-dict name, read as data (CPU copies)."""
    archive = open_archive(data, "TorchScript")
    root = _root(archive)
    refs = tensor_refs(archive)
    if sum(math.prod(ref.size) for ref in refs.values()) > len(data):  # before a value is copied
        raise more_values_than_bytes(f"{name}: the TorchScript archive", len(data))
    state, storages = {}, {}
    for key, ref in refs.items():
        storage = storages.get((ref.key, ref.dtype))
        if storage is None:  # each storage read once, however many tensors view it
            storage = storages[ref.key, ref.dtype] = _storage(archive, f"{root}data/{ref.key}", ref.dtype, name)
        try:
            state[key] = torch.as_strided(storage, ref.size, ref.stride, ref.offset).clone()
        except RuntimeError as exc:  # a view past its storage's end, a negative size
            raise CorruptFile(f"{name}: the TorchScript archive's tensor {key[:80]!r} is damaged "
                              f"({one_line(exc, 120, typed=False)}).") from None
    if not state:
        raise IncompatibleInput(f"{name}: the TorchScript archive holds no weights.")
    return state


def _storage(archive: Archive, member: str, dtype: torch.dtype, name: str) -> torch.Tensor:
    blob = archive.read(member)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if len(blob) % itemsize:  # torch.frombuffer would raise a bare ValueError (and keep the buffer exported)
        raise CorruptFile(f"{name}: the TorchScript archive's storage {member[-80:]!r} is {len(blob)} bytes, "
                          f"not whole {dtype} values.")
    return torch.frombuffer(bytearray(blob), dtype=dtype) if blob else torch.empty(0, dtype=dtype)


def with_weights(data: bytes, state: dict[str, torch.Tensor], name: str) -> bytes:
    """The TorchScript archive ``data`` with its tensors replaced by ``state``'s (same names, shapes, dtypes).

    Raises:
        IncompatibleInput: ``state`` is not this archive's tensors, or a tensor shares its storage or
            starts inside it (then the archive cannot take new values member by member).
    """
    archive = open_archive(data, "TorchScript")
    root = _root(archive)
    refs = tensor_refs(archive)
    if set(refs) != set(state) or any(tuple(state[k].shape) != r.size for k, r in refs.items()):
        raise IncompatibleInput(f"{name}: its weights are not the TorchScript model's.")
    keys = [r.key for r in refs.values()]
    if len(set(keys)) != len(keys) or any(r.offset for r in refs.values()):
        raise IncompatibleInput(f"{name}: the TorchScript model shares storage between weights; Glassbox cannot "
                                "put a state dict into it.", "Save each checkpoint as TorchScript too.")
    blobs = {f"{root}data/{r.key}": state[k].detach().cpu().to(r.dtype).contiguous().view(-1).view(torch.uint8)
             .numpy().tobytes() for k, r in refs.items()}
    sizes = {i.filename: i.file_size for i in archive.zf.infolist()}
    if any(sizes.get(member) != len(blob) for member, blob in blobs.items()):
        raise IncompatibleInput(f"{name}: the TorchScript model's weights fill their storage only in part; Glassbox "
                                "cannot put a state dict into it.", "Save each checkpoint as TorchScript too.")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in archive.zf.infolist():
            blob = blobs.get(info.filename)
            zf.writestr(info, blob if blob is not None else archive.read(info.filename))
    return out.getvalue()
