"""The server counts a Hugging Face upload's weights without reading them (issue 21: the server never holds
a user's weights): `huggingface.weight_shapes` reads a safetensors file's header alone and a ``.bin``'s pickle
alone (storages on the ``meta`` device), each checked against the bytes its file or record declares.

Each upload below is a tiny BERT folder packed by `folder_as_zip`, then one byte of its weights' data changed
in place: the zip's CRC of that member no longer matches, so a whole read of it fails (`state_dict`, what a
model process runs), while the server's check reads only the header / pickle and counts every value."""
from __future__ import annotations

import io
import math
import struct
import zipfile

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from explain.errors import CorruptFile
from explain.loading.huggingface import folder_as_zip, read_huggingface, state_dict
from tests.test_parser_bombs import _bert_zip


def _data_start(data: bytes, name: str) -> int:
    """Where the stored member ``name``'s bytes start in the zip ``data``."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    fields = struct.unpack(zipfile.structFileHeader, data[info.header_offset:info.header_offset + zipfile.sizeFileHeader])
    return info.header_offset + zipfile.sizeFileHeader + fields[10] + fields[11]


@pytest.fixture(scope="module")
def bert_weights() -> tuple[bytes, dict[str, torch.Tensor]]:
    """The tiny BERT's config.json and its weights (27 tensors, 978 values)."""
    zf = zipfile.ZipFile(io.BytesIO(_bert_zip()))
    return zf.read("bert/config.json"), load_safetensors(zf.read("bert/model.safetensors"))


def _folder(tmp_path, config: bytes, name: str, weights: bytes) -> bytes:
    (tmp_path / "config.json").write_bytes(config)
    (tmp_path / name).write_bytes(weights)
    data, _ = folder_as_zip(tmp_path)
    return data


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_a_folders_safetensors_are_counted_from_the_header_alone(tmp_path, bert_weights):
    config, weights = bert_weights
    blob = save_safetensors(weights)
    data = _folder(tmp_path, config, "model.safetensors", blob)
    header = 8 + int.from_bytes(blob[:8], "little")
    changed = _flip(data, _data_start(data, "model.safetensors") + header + len(blob[header:]) // 2)  # a value
    upload = read_huggingface(changed)  # the server's check
    assert upload.shapes == {k: tuple(v.shape) for k, v in weights.items()}
    assert sum(math.prod(s) for s in upload.shapes.values()) == sum(v.numel() for v in weights.values()) == 978
    assert "model.safetensors" not in upload.files
    with pytest.raises(CorruptFile, match="cannot be read"):  # a whole read meets the changed byte (Bad CRC-32)
        state_dict(upload)
    assert set(state_dict(read_huggingface(data))) == set(weights)  # unchanged: read whole in a model process


def test_a_folders_bin_is_counted_from_its_pickle_without_reading_its_records(tmp_path, bert_weights):
    config, weights = bert_weights
    buf = io.BytesIO()
    torch.save(weights, buf)
    data = _folder(tmp_path, config, "pytorch_model.bin", buf.getvalue())
    inner = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    record = next(n for n in inner.namelist() if n.endswith("/data/0"))
    at = _data_start(data, "pytorch_model.bin") + _data_start(buf.getvalue(), record)
    upload = read_huggingface(_flip(data, at))
    assert upload.shapes == {k: tuple(v.shape) for k, v in weights.items()}
    assert sum(math.prod(s) for s in upload.shapes.values()) == 978
    with pytest.raises(CorruptFile, match="cannot be read"):
        state_dict(upload)


def test_weights_that_claim_more_values_than_their_bytes_are_refused(tmp_path, bert_weights):
    """A header or pickle is counted only as far as the bytes it declares are there."""
    config, weights = bert_weights
    blob = save_safetensors({**weights, "pad": torch.zeros(1000)})
    cut = blob[:len(blob) - 3000]  # the header still lists 1000 values of 4 bytes
    (tmp_path / "st").mkdir()
    with pytest.raises(CorruptFile, match="model.safetensors is damaged"):
        read_huggingface(_folder(tmp_path / "st", config, "model.safetensors", cut))
    buf = io.BytesIO()
    torch.save({"pad": torch.zeros(1000)}, buf)
    short = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(short, "w") as zout:
        for info in zin.infolist():  # the record of 4000 bytes cut to 8
            zout.writestr(info.filename, zin.read(info)[:8] if info.filename.endswith("/data/0") else zin.read(info))
    (tmp_path / "bin").mkdir()
    with pytest.raises(CorruptFile, match="pytorch_model.bin's tensor 'pad' claims 4,000 bytes"):
        read_huggingface(_folder(tmp_path / "bin", config, "pytorch_model.bin", short.getvalue()))


def test_a_sharded_checkpoint_is_counted_over_its_shards_and_read_whole_in_index_order(tmp_path, bert_weights):
    import json

    config, weights = bert_weights
    names = sorted(weights)
    halves = {"model-1.safetensors": names[:10], "model-2.safetensors": names[10:]}
    for shard, keys in halves.items():
        (tmp_path / shard).write_bytes(save_safetensors({k: weights[k] for k in keys}))
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    data = _folder(tmp_path, config, "model.safetensors.index.json", json.dumps(index).encode())
    upload = read_huggingface(data)
    assert list(upload.weights) == list(halves) and upload.shapes == {k: tuple(weights[k].shape) for k in names}
    assert {k: v.shape for k, v in state_dict(upload).items()} == {k: weights[k].shape for k in names}


def test_counting_32_mib_of_weights_holds_none_of_them(tmp_path, bert_weights):
    """The server's peak memory while it checks an upload with 32 MiB of weights in a 64 MiB zip: the
    weights are never copied (a stored member is read in place); before, +64 MiB (read, then parsed)."""
    from tests.test_attack_pt2_lm import peak_growth_kib

    config, weights = bert_weights
    big = {**weights, "pad": torch.zeros(8 * 2**20)}  # [8M] float32: 32 MiB (an unexpected key, counted)
    buf = io.BytesIO()
    torch.save(big, buf)
    (tmp_path / "bin").mkdir()
    (tmp_path / "st").mkdir()
    uploads = [_folder(tmp_path / "bin", config, "pytorch_model.bin", buf.getvalue()),
               _folder(tmp_path / "st", config, "model.safetensors", save_safetensors(big))]
    del buf
    read_huggingface(_bert_zip())  # transformers imported before the measurement
    for data in uploads:
        counted = []
        growth = peak_growth_kib(lambda data=data, counted=counted: counted.append(read_huggingface(data).shapes))
        assert counted[0]["pad"] == (8 * 2**20,) and growth < 8 * 1024, growth


def test_a_deflated_bin_in_a_users_zip_is_counted_through_a_temporary_file(tmp_path, bert_weights):
    """A zip tool deflates pytorch_model.bin (16 MiB of random values): it is inflated once, in chunks, to an
    anonymous file the count seeks in, never into the server's memory."""
    from tests.test_attack_pt2_lm import peak_growth_kib

    config, weights = bert_weights
    buf = io.BytesIO()
    torch.save({**weights, "pad": torch.rand(4 * 2**20, generator=torch.Generator().manual_seed(0))}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("bert/config.json", config)
        zf.writestr("bert/pytorch_model.bin", buf.getvalue())
    data = out.getvalue()
    del buf, out
    read_huggingface(_bert_zip())  # transformers imported before the measurement
    counted = []
    growth = peak_growth_kib(lambda: counted.append(read_huggingface(data).shapes))
    assert counted[0]["pad"] == (4 * 2**20,) and len(counted[0]) == len(weights) + 1 and growth < 8 * 1024, growth
