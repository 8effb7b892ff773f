"""Attack A3 on `explain.loading.script_tensors` (a TorchScript archive's weights read as data in the server):
hand-written data.pkl opcodes; nothing may run, time and memory stay bounded, each failure is a Glassbox error."""
from __future__ import annotations

import io
import struct
import zipfile

import pytest
import torch

import explain.loading.script_tensors as st
from explain.errors import CorruptFile, UnsafeFile
from explain.loading.source import open_archive

PROTO, STOP, MARK, EMPTY_TUPLE, EMPTY_DICT = b"\x80\x02", b".", b"(", b")", b"}"
NEWOBJ, BUILD, SETITEMS, TUPLE, REDUCE = b"\x81", b"b", b"u", b"t", b"R"


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text)) + text.encode()


def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def _module(state: bytes) -> bytes:
    """A __torch__ object whose BUILD state is the dict ``state`` (key, value opcodes)."""
    return _glob("__torch__", "M") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + MARK + state + SETITEMS + BUILD


def _archive(pkl: bytes, **members: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        for key, blob in members.items():
            zf.writestr(f"archive/data/{key}", blob)
    return out.getvalue()


def _refs(pkl: bytes):
    return st.tensor_refs(open_archive(_archive(PROTO + pkl + STOP), "TorchScript"))


def _tensor(key: str, offset: int, size: tuple[int, ...]) -> bytes:
    """torch._utils._rebuild_tensor_v2((storage, FloatStorage, key, cpu, n), offset, size, stride, ...)."""
    def ints(values):
        return MARK + b"".join(b"J" + struct.pack("<i", v) for v in values) + TUPLE
    pid = MARK + _str("storage") + _glob("torch", "FloatStorage") + _str(key) + _str("cpu") + b"K\x01" + TUPLE
    stride = tuple(1 for _ in size)
    return (_glob("torch._utils", "_rebuild_tensor_v2") + MARK + pid + b"Q" + b"J" + struct.pack("<i", offset)
            + ints(size) + ints(stride) + b"\x89" + _glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
            + TUPLE + REDUCE)


def test_no_callable_but_the_stand_ins_is_built():
    for module, name in [("os", "system"), ("builtins", "eval"), ("posix", "system"),
                         ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch.jit", "load"),
                         ("torch._C", "import_ir_module"), ("torch", "load"), ("__builtin__", "getattr")]:
        pkl = _glob(module, name) + MARK + _str("touch /tmp/pwned") + TUPLE + REDUCE
        with pytest.raises(UnsafeFile, match=f"{module}.{name}"):
            _refs(pkl)


def test_a_module_that_holds_itself_is_refused_not_recursed():
    pkl = _glob("__torch__", "M") + EMPTY_TUPLE + NEWOBJ + _put(0) + EMPTY_DICT + MARK + _str("me") + _get(0) \
        + SETITEMS + BUILD
    with pytest.raises(CorruptFile, match="module tree"):  # was RecursionError
        _refs(pkl)


def test_a_chain_deeper_than_python_recursion_is_refused():
    pkl = _module(b"") + _put(0)
    for i in range(1, 3000):
        pkl += _module(_str("a") + _get(i - 1)) + _put(i)
    with pytest.raises(CorruptFile, match="levels deep"):  # was RecursionError
        _refs(pkl)


def test_a_memo_bomb_walks_a_bounded_number_of_steps(monkeypatch):
    # 64 levels, each holding the level below twice: 2**64 paths from a pickle of a few KB (hung before)
    monkeypatch.setattr(st, "_MAX_ATTRIBUTES", 5000)
    pkl = _module(_str("w") + _tensor("0", 0, (1,))) + _put(0)
    for i in range(1, 64):
        pkl += _module(_str("a") + _get(i - 1) + _str("b") + _get(i - 1)) + _put(i)
    with pytest.raises(CorruptFile, match="over 5000 attributes"):
        _refs(pkl)
    small = _module(_str("a") + _get(0) + _str("b") + _get(0))  # a shared module below two names: both kept
    assert sorted(_refs(_module(_str("w") + _tensor("0", 0, (1,))) + _put(0) + small)) == ["a.w", "b.w"]


def test_shapes_torch_cannot_hold_are_damaged_files():
    huge = _glob("torch._utils", "_rebuild_tensor_v2") + MARK + MARK + _str("storage") + _glob(
        "torch", "FloatStorage") + _str("0") + _str("cpu") + b"K\x01" + TUPLE + b"Q" + b"K\x00" + MARK \
        + b"\x8a\x09" + b"\x00" * 8 + b"\x01" + TUPLE + MARK + b"K\x01" + TUPLE + TUPLE + REDUCE  # size (2**64,)
    with pytest.raises(CorruptFile, match="damaged"):
        _refs(_module(_str("w") + huge))


def test_storage_bytes_not_whole_values_and_shared_storage(monkeypatch):
    pkl = PROTO + _module(_str("w") + _tensor("0", 0, (1,))) + STOP
    with pytest.raises(CorruptFile, match="not whole torch.float32 values"):  # was a bare ValueError
        st.read_script_state(_archive(pkl, **{"0": b"abc"}), "x.pt")
    # 300 tensors of one value each over one 4 KB storage: the storage is read once, each value right
    values = torch.arange(1024, dtype=torch.float32)
    many = b"".join(_str(f"w{i}") + _tensor("0", 3 * i, (1,)) for i in range(300))
    data = _archive(PROTO + _module(many) + STOP, **{"0": values.numpy().tobytes()})
    reads, real = [], st.Archive.read
    monkeypatch.setattr(st.Archive, "read", lambda self, name, *a, **k: reads.append(name) or real(self, name, *a, **k))
    state = st.read_script_state(data, "x.pt")
    assert reads.count("archive/data/0") == 1  # was 300 (a 100 MB storage read 10**5 times)
    assert [float(state[f"w{i}"]) for i in (0, 1, 299)] == [0.0, 3.0, 897.0]
