"""A zip's directory is bounded before ``zipfile`` builds its list (`source.check_zip_directory`): each entry
costs a ``ZipInfo`` of ~10 times its bytes, so an upload (`open_zip`) or a ``.bin``'s inner zip (its records,
read by `weights_only_shapes` / `weights_only_load`) of millions of tiny entries cost the server gigabytes.
The end-of-central-directory record's count and the directory's size are read first; the list is counted after."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import pytest

from explain.errors import TooLarge
from explain.loading.source import MAX_ZIP_ENTRIES, MAX_ZIP_ENTRY_BYTES, open_zip, weights_only_shapes


def _zip(records: int, claimed: int) -> bytes:
    """A zip of one stored member whose directory record is repeated ``records`` times, its end record claiming
    ``claimed`` entries (``zipfile`` parses the directory's bytes, whatever the count)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a", b"x")
    data = buf.getvalue()
    end = struct.unpack(zipfile.structEndArchive, data[-zipfile.sizeEndCentDir:])
    size, offset = end[5], end[6]
    directory = data[offset:offset + size] * records
    return data[:offset] + directory + struct.pack(
        zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, claimed, claimed, len(directory), offset, 0)


def test_a_zip_of_a_few_entries_opens_and_one_over_the_cap_is_refused():
    assert len(open_zip(_zip(3, 3), "Hugging Face", 2**20, max_entries=3).infolist()) == 3
    with pytest.raises(TooLarge, match=r"^The Hugging Face archive holds 4 zip entries, over the 3 Glassbox reads\."):
        open_zip(_zip(4, 4), "Hugging Face", 2**20, max_entries=3)


def test_a_zip_claiming_more_entries_than_the_cap_is_refused_before_its_directory_is_read():
    with pytest.raises(TooLarge, match=f"holds 10,001 zip entries, over the {MAX_ZIP_ENTRIES:,}"):
        open_zip(_zip(1, MAX_ZIP_ENTRIES + 1), "TorchScript", 2**30)


def test_a_zip_holding_more_entries_than_it_claims_is_refused_in_bounded_memory():
    # 200,000 records (9.4 MB) behind an end record claiming 5: over the directory's byte cap, never parsed
    data = _zip(200_000, 5)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match=f"zip directory is 9,400,000 bytes, over the "
                                           f"{MAX_ZIP_ENTRIES * MAX_ZIP_ENTRY_BYTES:,}"):
            open_zip(data, "Hugging Face", 2**30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # parsed, ~200 MB of ZipInfo objects
    # 10,001 short records claiming 5: within the byte cap, counted once listed
    with pytest.raises(TooLarge, match="holds 10,001 zip entries"):
        open_zip(_zip(MAX_ZIP_ENTRIES + 1, 5), "Hugging Face", 2**30)


@pytest.mark.parametrize("records, claimed", [(1, 60_000), (MAX_ZIP_ENTRIES + 1, 5)], ids=["claims", "holds"])
def test_a_bin_with_more_records_than_the_cap_is_refused_before_torch_reads_it(records, claimed):
    with pytest.raises(TooLarge, match="^The pytorch_model.bin holds"):
        weights_only_shapes(io.BytesIO(_zip(records, claimed)), "pytorch_model.bin")


def test_a_dataset_zip_of_more_images_than_a_model_zip_holds_is_read_and_an_npz_directory_is_bounded(monkeypatch):
    from explain.dataset import reading
    from explain.dataset.reading import _is_image_zip
    from explain.inputs.reading import load_npz

    buf = io.BytesIO()  # a dataset of images holds one entry per image: past a model's 10,000
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(MAX_ZIP_ENTRIES + 1):
            zf.writestr(f"cat/{i}.png", b"")
    assert _is_image_zip(buf.getvalue(), "images.zip")
    monkeypatch.setattr(reading, "MAX_DATASET_ZIP_ENTRIES", 50_000)  # a claim past the cap (no zip64 here)
    with pytest.raises(TooLarge, match="holds 60,000 zip entries, over the 50,000 Glassbox reads"):
        _is_image_zip(_zip(1, 60_000), "images.zip")
    with pytest.raises(TooLarge, match="holds 60,000 zip entries"):  # an .npz claiming 60,000 arrays
        load_npz(_zip(1, 60_000), "inputs.npz")
