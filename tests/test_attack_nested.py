"""Attack a3: payloads nested and deflated inside an upload, read by the server itself.

A Hugging Face ``pytorch_model.bin`` (and a Training page ``.pth`` checkpoint) is unpickled in the
server by `source.weights_only_load` (the config is sized against the weights it holds there).
torch's zip reader inflates a deflated record, although ``torch.save`` only ever stores them: a
``.bin`` whose zero record is deflated, deflated again as a member of the upload, made a 1.3 KB
upload 64 MiB of server memory (some 50,000 times its size).
"""
from __future__ import annotations

import io
import zipfile

import pytest
import torch

from explain.errors import CorruptFile
from explain.loading.huggingface import read_huggingface
from explain.loading.source import weights_only_load
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
