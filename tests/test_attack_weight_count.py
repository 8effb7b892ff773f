"""Red-team checks of the server's weight counting (`weights.safetensors_shapes`, `source.weights_only_shapes`):
the count bounds config.json (`huggingface.check_config_size`: a config may not ask for more parameters than
the weights hold), so a header or pickle that counts values that are not there lets a tiny upload ask for a
model up to the operator's cap; and a header or pickle that raised a plain Python error (RecursionError,
OverflowError, NotImplementedError) instead of `CorruptFile`."""
from __future__ import annotations

import io
import json
import struct

import pytest
import torch

from explain.errors import CorruptFile
from explain.loading.source import weights_only_shapes
from explain.loading.weights import safetensors_shapes


def _safetensors(header: bytes | dict, data: int) -> tuple[bytes, int]:
    """A safetensors head of ``header`` and the whole file's size with ``data`` bytes after it."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head, 8 + len(head) + data


def _f32(shape, begin, stop) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, stop]}


def test_safetensors_shapes_count_each_byte_once():
    assert safetensors_shapes(*_safetensors({"a": _f32([2], 0, 8), "b": _f32([0, 7], 8, 8), "c": _f32([1], 8, 12)},
                                            12)) == {"a": (2,), "b": (0, 7), "c": (1,)}
    # 1,000 tensors over the same 4 MB: 1,000 times the values that are there (safetensors itself refuses it)
    shared = {f"w{i}": _f32([2 ** 20], 0, 2 ** 22) for i in range(1000)}
    with pytest.raises(CorruptFile, match="of the bytes it holds"):
        safetensors_shapes(*_safetensors(shared, 2 ** 22))
    with pytest.raises(CorruptFile, match="of the bytes it holds"):
        safetensors_shapes(*_safetensors({"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}, 12))


@pytest.mark.parametrize("header", [
    b"[" * 60_000,  # json.loads: RecursionError
    b'{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 8]}}',  # int(inf): OverflowError
    b'{"a": {"dtype": "F32", "shape": [2.7], "data_offsets": [0, 8]}}',  # int(2.7) counted 2
    b'{"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}',
    b'{"a": {"dtype": "F32", "shape": [true, 2], "data_offsets": [0, 8]}}',
    b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]}}',
], ids=["deep", "inf", "float", "text", "bool", "float offset"])
def test_a_malformed_safetensors_header_is_corrupt_file(header):
    with pytest.raises(CorruptFile, match="truncated or damaged"):
        safetensors_shapes(*_safetensors(header, 8))


def _saved(obj) -> io.BytesIO:
    file = io.BytesIO()
    torch.save(obj, file)
    file.seek(0)
    return file


def test_a_bin_tensor_of_more_values_than_its_storage_is_refused():
    """An expanded tensor (stride 0) is saved with its one-value storage: 10^9 values counted from 4 bytes."""
    with pytest.raises(CorruptFile, match="claims 4,000,000,000 bytes"):
        weights_only_shapes(_saved({"w": torch.zeros(1).expand(10 ** 9)}), "pytorch_model.bin")
    with pytest.raises(CorruptFile, match="claims"):  # overlapping strides: 4 x 4 values over 7
        weights_only_shapes(_saved({"w": torch.zeros(7).as_strided((4, 4), (1, 1))}), "pytorch_model.bin")
    # views within their storage count as before: a slice, a transpose, a tied pair; their one storage's 24 values once
    base = torch.zeros(6, 4)
    got = weights_only_shapes(_saved({"a": base[1:3], "b": base.t(), "c": base}), "pytorch_model.bin")
    assert got == ({"a": (2, 4), "b": (4, 6), "c": (6, 4)}, 24)
    assert weights_only_shapes(_saved({"a": base[1:3]}), "pytorch_model.bin")[1] == 8  # torch.save keeps all 24


@pytest.mark.parametrize("tensor", [torch.eye(3).to_sparse(), torch.eye(3).to_sparse_csr()], ids=["coo", "csr"])
def test_a_bin_sparse_tensor_is_corrupt_file_not_a_crash(tensor):
    """``untyped_storage()`` of a sparse tensor raised NotImplementedError (a 500 / a crash of the upload)."""
    with pytest.raises(CorruptFile, match="dense"):
        weights_only_shapes(_saved({"w": tensor}), "pytorch_model.bin")


def test_a_legacy_torch_file_is_corrupt_file_not_a_crash():
    """A pre-1.6 ``torch.save`` file unpickled on ``meta``, then read as a zip: BadZipFile escaped. It has
    no records to check the storages against, so it is refused before it is unpickled."""
    file = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, file, _use_new_zipfile_serialization=False)
    file.seek(0)
    with pytest.raises(CorruptFile, match="not a torch zip file"):
        weights_only_shapes(file, "pytorch_model.bin")


def test_a_pickle_naming_a_record_out_of_order_is_corrupt_file():
    """torch's meta reader asserts that storages come in their records' order: AssertionError escaped."""
    import collections
    import pickle
    import zipfile

    class Storage:  # pickled as torch.save's persistent id of a record that is not there
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (4,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "7", "cpu", 4) if isinstance(obj, Storage) else None

    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump({"w": Tensor()})
    template, out = zipfile.ZipFile(_saved({"w": torch.zeros(4)})), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in template.infolist():
            zf.writestr(info.filename, pkl.getvalue() if info.filename.endswith("data.pkl") else template.read(info))
    out.seek(0)
    with pytest.raises(CorruptFile, match="expected key"):
        weights_only_shapes(out, "pytorch_model.bin")
