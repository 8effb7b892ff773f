"""Attack a3: payloads nested and deflated inside an upload, read by the server itself.

A Hugging Face ``pytorch_model.bin`` (and a Training page ``.pth`` checkpoint) is unpickled in the
server by `source.weights_only_load` (the config is sized against the weights it holds there).
torch's zip reader inflates a deflated record, although ``torch.save`` only ever stores them: a
``.bin`` whose zero record is deflated, deflated again as a member of the upload, made a 1.3 KB
upload 64 MiB of server memory (some 50,000 times its size).
"""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from explain.errors import CorruptFile, TooLarge
from explain.loading.huggingface import check_config_size, read_huggingface
from explain.loading.source import MAX_INFLATE_FLOOR, open_archive, weights_only_load
from tests.test_attack_pt2_lm import one_clear_line, peak_growth_kib
from tests.test_parser_bombs import _bert_zip


def _deflated_records(blob: bytes) -> bytes:
    """A torch.save zip with every record deflated (torch.save stores them)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
        for info in zin.infolist():
            zo.writestr(info.filename, zin.read(info))
    return out.getvalue()


@pytest.fixture(scope="module")
def nested_bin() -> bytes:
    """A BERT zip's config.json and a pytorch_model.bin of a 64 MiB zero tensor, its record deflated."""
    buf = io.BytesIO()
    torch.save({"pad": torch.zeros(16 * 2**20)}, buf)  # [16M] float32: 64 MiB
    config = zipfile.ZipFile(io.BytesIO(_bert_zip())).read("bert/config.json")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
        zo.writestr("bert/config.json", config)
        zo.writestr("bert/pytorch_model.bin", _deflated_records(buf.getvalue()))
    return out.getvalue()


def test_a_bin_with_deflated_records_is_refused_before_torch_inflates_it(nested_bin):
    assert len(nested_bin) < 2_000
    caught = []

    def run():
        with pytest.raises(CorruptFile) as exc:
            read_huggingface(nested_bin)  # what the server runs on a Hugging Face upload
        caught.append(exc.value)

    growth = peak_growth_kib(run)
    print(f"{len(nested_bin)} byte upload: server peak +{growth / 1024:.1f} MiB")
    assert "compressed" in one_clear_line(caught[0]) and "pytorch_model.bin" in str(caught[0])
    assert growth < 32 * 1024


def test_a_stored_checkpoint_still_loads_and_a_deflated_one_is_refused():
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, buf)
    assert torch.equal(weights_only_load(buf.getvalue(), "checkpoint")["w"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(CorruptFile, match="checkpoint has compressed records"):
        weights_only_load(_deflated_records(buf.getvalue()), "checkpoint")


def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method, compresslevel=9) as zo:
        for name, body in members.items():
            zo.writestr(name, body)
    return out.getvalue()


def test_a_json_the_server_parses_is_refused_when_it_inflates_past_what_json_files_do():
    """A Hugging Face zip's tokenizer_config.json of 4 MiB of empty lists deflated to 4 KB: json.loads
    held ~25 times its bytes in the server (16 MiB, the file's cap, in 17 KB: +415 MiB, 21 s)."""
    base = zipfile.ZipFile(io.BytesIO(_bert_zip()))
    members = {i.filename: base.read(i) for i in base.infolist()}
    members["bert/tokenizer_config.json"] = b'{"x": [' + b"[]," * (4 * 2**20 // 3) + b'[]]}'
    upload = _zip(members)
    assert len(upload) < 8_000
    caught = []

    def run():
        with pytest.raises(TooLarge) as exc:
            read_huggingface(upload)
        caught.append(exc.value)

    growth = peak_growth_kib(run)
    print(f"{len(upload)} byte upload: server peak +{growth / 1024:.1f} MiB")
    text = one_clear_line(caught[0])
    assert "tokenizer_config.json" in text and "compressed" in text
    assert growth < 32 * 1024


def test_reads_refuse_only_members_that_inflate_past_the_ratio():
    big = bytes(2 * 2**20)  # 2 MiB of zeros: deflates ~1000 times
    packed = open_archive(_zip({"a.json": big, "small.json": bytes(MAX_INFLATE_FLOOR)}), "test")
    assert packed.read("small.json", 16 * 2**20) == bytes(MAX_INFLATE_FLOOR)  # under the floor, any ratio
    for cap in (16 * 2**20, None):  # capped (a JSON file) or not (weights)
        with pytest.raises(TooLarge, match=r"a.json unpacks to 2.0 MiB from 2 KiB"):
            packed.read("a.json", cap)
    stored = open_archive(_zip({"a.json": big}, zipfile.ZIP_STORED), "test")
    assert stored.read("a.json", 16 * 2**20) == stored.read("a.json") == big  # torch.export.save, folder_as_zip: stored


def _config_zip(edit) -> bytes:
    base = zipfile.ZipFile(io.BytesIO(_bert_zip()))
    members = {i.filename: base.read(i) for i in base.infolist()}
    config = json.loads(members["bert/config.json"])
    edit(config)
    members["bert/config.json"] = json.dumps(config).encode()
    return _zip(members)


def test_a_config_of_many_values_is_refused_before_transformers_copies_and_logs_each():
    """1 MiB of config.json (under the ratio's floor, 2 KB deflated): transformers' from_dict deep-copies and
    JSON-encodes every value: +72 MiB and 3.3 s of the server for a 2 KB upload of '[],' (transformers imported
    before; refused: +29 MiB, 1.4 s, the parse itself), +19 MiB and 0.9 s of '0.5,' (refused: +4 MiB)."""
    upload = _config_zip(lambda config: config.update(x=[0.5] * 200_000))
    assert len(upload) < 4_000
    caught = []

    def run():
        with pytest.raises(TooLarge) as exc:
            read_huggingface(upload)
        caught.append(exc.value)

    growth = peak_growth_kib(run)
    print(f"{len(upload)} byte upload: server peak +{growth / 1024:.1f} MiB")
    assert "config.json holds 200,0" in one_clear_line(caught[0])
    assert growth < 32 * 1024


def test_a_config_s_labels_count_apart_from_its_other_values():
    labels = {str(i): f"class {i}" for i in range(30_000)}
    cfg = {"model_type": "bert", "hidden_size": 8, "id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}
    check_config_size(cfg, 10**9)  # 60,000 values, all of them labels
    with pytest.raises(TooLarge, match="asks for 200,000 labels"):
        check_config_size({**cfg, "label2id": {f"c{i}": i for i in range(200_000)}}, 10**9)
    with pytest.raises(TooLarge, match=r"config.json holds 20,\d+ values besides its labels"):
        check_config_size({**cfg, "x": [[]] * 20_000}, 10**9)


def test_weights_that_inflate_past_the_ratio_are_refused_before_the_server_reads_them():
    """model.safetensors holding 8 MiB of zeros, 8 KB deflated: the server read it whole and parsed it (to count
    its values): ~2 times the unpacked size (64 MiB in a 66 KB upload: +129 MiB), up to twice the upload cap."""
    from safetensors.torch import load, save

    base = zipfile.ZipFile(io.BytesIO(_bert_zip()))
    members = {i.filename: base.read(i) for i in base.infolist()}
    members["bert/model.safetensors"] = save({**load(members["bert/model.safetensors"]), "pad": torch.zeros(2 * 2**20)})
    upload = _zip(members)
    assert len(upload) < 16_000
    caught = []

    def run():
        with pytest.raises(TooLarge) as exc:
            read_huggingface(upload)
        caught.append(exc.value)

    growth = peak_growth_kib(run)
    print(f"{len(upload)} byte upload: server peak +{growth / 1024:.1f} MiB")
    assert "model.safetensors unpacks to 8.0 MiB" in one_clear_line(caught[0])
    assert growth < 4 * 1024
