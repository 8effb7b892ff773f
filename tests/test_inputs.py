"""explain.inputs.reading: every input format gives known model-ready numbers or a clear refusal."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile
from explain.inputs.reading import InputBatch, detokenize, read_inputs, tokenize
from explain.spec import InputSpec

IMAGE = InputSpec("image", (3, 32, 32), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], class_names=["a", "b"])
TABULAR = InputSpec("tabular", (3,), mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0], feature_names=["a", "b", "c"])
VOCAB = ["<pad>", "<unk>", "<cls>", "not", "good", "bad", "!"]
TEXT = InputSpec("text", (6,), dtype="int64", vocabulary=VOCAB, cls_token="<cls>", lowercase=True)


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def test_png_is_resized_and_normalised_with_the_spec():
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 48))  # right half blue
    batch = read_inputs(_png(img), IMAGE, filename="half.png")
    assert batch.array.shape == (1, 3, 32, 32) and batch.array.dtype == np.float32
    np.testing.assert_allclose(batch.array[0, :, 10, 0], [1.0, -1.0, -1.0], atol=1e-6)  # red: (1-.5)/.5
    np.testing.assert_allclose(batch.array[0, :, 10, 31], [-1.0, -1.0, 1.0], atol=1e-6)  # blue
    assert batch.display[0].shape == (32, 32, 3) and batch.display[0].dtype == np.uint8
    assert tuple(batch.display[0][5, 0]) == (255, 0, 0) and batch.source_names == ["half.png"]


def test_several_images_and_jpeg_make_one_batch():
    red = _png(Image.new("RGB", (32, 32), (255, 0, 0)))
    grey = _png(Image.new("L", (40, 40), 128), fmt="JPEG")
    batch = read_inputs([red, grey], IMAGE)
    assert batch.array.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(batch.array[1], (128 / 255 - 0.5) / 0.5, atol=0.02)


def test_decompression_bombs_are_too_large_before_decoding():
    with pytest.raises(TooLarge, match="8000x8000 pixels, over the 40,000,000 pixel limit"):
        read_inputs(_png_header_only(8000, 8000), IMAGE, filename="bomb.png")
    with pytest.raises(TooLarge):  # so large that Pillow itself refuses at open
        read_inputs(_png_header_only(100_000, 100_000), IMAGE, filename="bomb.png")


def test_image_npy_in_nhwc_is_transposed_and_displayed():
    arr = np.zeros((2, 32, 32, 3), np.float32)
    arr[..., 1] = 0.5  # normalised green 0.5 = pixel 0.5 * 0.5 + 0.5 = 0.75
    batch = read_inputs(_npy(arr), IMAGE, filename="x.npy")
    assert batch.array.shape == (2, 3, 32, 32)
    assert tuple(batch.display[0][0, 0]) == (128, 191, 128)  # round((.5, .75, .5) * 255)


def test_images_for_a_tabular_model_are_refused():
    with pytest.raises(IncompatibleInput, match="is an image, but this model takes tabular inputs"):
        read_inputs(_png(Image.new("RGB", (4, 4))), TABULAR, filename="x.png")


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------
def test_npy_and_npz_round_trip_with_labels():
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    batch = read_inputs(_npy(x), TABULAR, filename="x.npy")
    assert batch.array.dtype == np.float32 and np.array_equal(batch.array, x.astype(np.float32))
    assert batch.display[1] == {"a": 3 * 2 + 1.0, "b": 4 * 2 + 2.0, "c": 5 * 2 + 3.0}  # unstandardised
    buf = io.BytesIO()
    np.savez(buf, inputs=x, labels=np.array([0, 1, 1, 0]))
    batch = read_inputs(buf.getvalue(), TABULAR, filename="x.npz")
    assert batch.labels.tolist() == [0, 1, 1, 0] and len(batch) == 4
    buf = io.BytesIO()
    np.savez(buf, whatever=x[:2])
    assert len(read_inputs(buf.getvalue(), TABULAR, filename="y.npz")) == 2  # the only array
    buf = io.BytesIO()
    np.savez(buf, a=x, b=x)
    with pytest.raises(IncompatibleInput, match="none named 'inputs'"):
        read_inputs(buf.getvalue(), TABULAR, filename="z.npz")


def test_object_arrays_are_refused_without_unpickling():
    obj = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(UnsafeFile, match="object array"):
        read_inputs(_npy(obj, allow_pickle=True), TABULAR, filename="x.npy")
    buf = io.BytesIO()
    np.savez(buf, inputs=obj)
    with pytest.raises(UnsafeFile, match="object array"):
        read_inputs(buf.getvalue(), TABULAR, filename="x.npz")


def test_array_shape_dtype_and_nan_errors_are_clear():
    with pytest.raises(IncompatibleInput, match=r"samples of shape \[4\]; the model expects \[3\]"):
        read_inputs(_npy(np.zeros((2, 4))), TABULAR, filename="x.npy")
    bad = np.zeros((3, 3))
    bad[2, 1] = np.nan
    with pytest.raises(IncompatibleInput, match="NaN or infinite values \\(first in sample 2\\)"):
        read_inputs(_npy(bad), TABULAR, filename="x.npy")
    with pytest.raises(IncompatibleInput, match="integer token ids"):
        read_inputs(_npy(np.zeros((2, 6), np.float32)), TEXT, filename="ids.npy")
    with pytest.raises(IncompatibleInput, match="token ids from 0 to 9; the vocabulary has ids 0..6"):
        read_inputs(_npy(np.array([[0, 9, 0, 0, 0, 0]])), TEXT, filename="ids.npy")
    with pytest.raises(CorruptFile, match="empty"):
        read_inputs(b"", TABULAR, filename="x.npy")


def test_from_arrays_and_concatenate():
    a = InputBatch.from_arrays(np.zeros((2, 3)), TABULAR, labels=np.array([1, 0]))
    b = InputBatch.from_arrays(np.ones((1, 3)), TABULAR, labels=np.array([1]))
    both = InputBatch.concatenate([a, b])
    assert both.array.shape == (3, 3) and both.labels.tolist() == [1, 0, 1] and len(both.display) == 3


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------
def test_csv_columns_are_matched_by_name_and_standardised():
    csv = b"c,label,a,b\n7,1,1,4\n3,0,5,2\n"
    batch = read_inputs(csv, TABULAR, filename="rows.csv")
    np.testing.assert_allclose(batch.array, [[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])  # (x - mean) / std
    assert batch.labels.tolist() == [1, 0]
    assert batch.display[0] == {"a": 1.0, "b": 4.0, "c": 7.0}
    assert batch.source_names == ["rows.csv:1", "rows.csv:2"]
    headerless = read_inputs(b"1,4,7\n5,2,3\n", TABULAR, filename="rows.csv")
    np.testing.assert_allclose(headerless.array, batch.array)


def test_csv_errors_name_the_problem():
    with pytest.raises(IncompatibleInput, match="lacks column\\(s\\) b, c"):
        read_inputs(b"a,x\n1,2\n", TABULAR, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match="column 'b' has a non-numeric value in row 1"):
        read_inputs(b"a,b,c\n1,zz,3\n", TABULAR, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match="NaN or infinite value in row 2, column 'c'"):
        read_inputs(b"a,b,c\n1,2,3\n1,2,\n", TABULAR, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match="4 columns and no header; the model takes 3"):
        read_inputs(b"1,2,3,4\n", TABULAR, filename="rows.csv")


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------
def test_tokenize_known_answers():
    assert tokenize("Not good!", TEXT) == [2, 3, 4, 6, 0, 0]
    assert tokenize("very BAD movie, really bad", TEXT) == [2, 1, 5, 1, 1, 5]  # ',' not in vocab: dropped
    assert tokenize("good good good good good good good", TEXT) == [2, 4, 4, 4, 4, 4]  # truncated
    no_cls = InputSpec("text", (4,), dtype="int64", vocabulary=VOCAB, lowercase=False)
    assert tokenize("Good good", no_cls) == [1, 4, 0, 0]
    assert detokenize([2, 3, 4, 0, 0], TEXT) == ["<cls>", "not", "good", "<pad>", "<pad>"]
    assert detokenize([9], TEXT) == ["<id 9>"]


def test_txt_files_give_one_row_per_line():
    batch = read_inputs(b"Not good!\n\nbad\n", TEXT, filename="reviews.txt")
    assert batch.array.tolist() == [[2, 3, 4, 6, 0, 0], [2, 5, 0, 0, 0, 0]]
    assert batch.array.dtype == np.int64
    assert batch.display == [["<cls>", "not", "good", "!"], ["<cls>", "bad"]]
    with pytest.raises(IncompatibleInput, match="no vocabulary"):
        read_inputs(b"good\n", InputSpec("text", (6,), dtype="int64"), filename="r.txt")


def test_padding_is_the_vocabularys_pad_id_at_any_position():
    """One definition of padding (explain.inputs.text.padding_mask): the id the model masks."""
    from explain.inputs.text import padding_mask, real_length, real_positions, tokens_for_display
    from explain.viz.attribution import text_attribution_html

    ids = np.array([2, 3, 0, 4, 0, 0])
    assert padding_mask(ids, TEXT).tolist() == [False, False, True, False, True, True]
    assert padding_mask(ids.reshape(2, 3)).tolist() == [[False, False, True], [False, True, True]]
    assert real_positions(ids, TEXT) == [0, 1, 3] and real_length(ids, TEXT) == 4
    assert real_positions([0, 0], TEXT) == [0, 1] and real_length([0, 0]) == 1  # all padding: keep everything
    assert not padding_mask(np.zeros(3), TABULAR).any()  # only text has padding
    # the vocabulary names its pad token (BERT-style "[PAD]", here at id 2): that id is padding, not 0
    bert = InputSpec("text", (4,), dtype="int64", vocabulary=["hi", "[UNK]", "[PAD]", "there"])
    assert padding_mask([0, 3, 2, 2], bert).tolist() == [False, False, True, True]
    assert tokens_for_display([0, 3, 2, 2], bert) == ["hi", "there"]
    html = text_attribution_html(detokenize([0, 3, 2, 2], bert), np.array([1.0, -1.0, 5.0, 5.0]),
                                 padding=padding_mask([0, 3, 2, 2], bert))
    assert "[PAD]" not in html and ">hi<" in html and ">there<" in html


# --------------------------------------------------------------------------
# CSV headers (issue 20, item 8.2): names matched, a label column taken as labels, header names shown
# --------------------------------------------------------------------------
NO_NAMES = InputSpec("tabular", (3,))


def test_csv_header_names_the_features_when_the_spec_has_none_and_a_label_column_is_the_labels():
    from explain.inputs.tabular import feature_names, parse_csv

    csv = b"age,bmi,dose,Outcome\n1,2,3,1\n4,5,6,0\n"  # 3 features + a label column (Pima's 'Outcome')
    batch = read_inputs(csv, NO_NAMES, filename="pima.csv")
    assert batch.array.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and batch.labels.tolist() == [1, 0]
    assert batch.display[0] == {"age": 1.0, "bmi": 2.0, "dose": 3.0}
    assert feature_names(NO_NAMES, batch.display) == ["age", "bmi", "dose"]  # what a page names the bars with
    assert feature_names(NO_NAMES) == ["feature 0", "feature 1", "feature 2"]
    assert feature_names(TABULAR, batch.display) == ["a", "b", "c"]  # the spec's names win
    rows = parse_csv(b"y,x1,label,x2\n9,1,0,2\n", NO_NAMES, "r.csv")  # 'label' before 'y': 'y' is a feature
    assert rows.feature_names == ["y", "x1", "x2"] and rows.labels.tolist() == [0] and rows.features.tolist() == [[9, 1, 2]]
    rows = parse_csv(b"x,y,z\n1,2,3\n", NO_NAMES, "r.csv")  # as many columns as features: 'y' is one of them
    assert rows.labels is None and rows.features.tolist() == [[1, 2, 3]]
    assert rows.notes == ["column(s) y read as feature(s): the model takes 3 features and the file has 3 columns."]


def test_csv_columns_match_the_spec_by_name_in_any_order_and_extra_ones_are_noted():
    from explain.inputs.tabular import parse_csv

    rows = parse_csv(b"id,C,Label,A , b,comment\n5,7,1,1,4,ok\n6,3,0,5,2,fine\n", TABULAR, "rows.csv")
    np.testing.assert_allclose(rows.features, [[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])  # a, b, c: case and spaces aside
    assert rows.labels.tolist() == [1, 0] and rows.feature_names == ["a", "b", "c"]
    assert rows.display[0] == {"a": 1.0, "b": 4.0, "c": 7.0}
    assert rows.notes == ["column(s) id, comment ignored: the spec's features do not name them."]


def test_csv_header_errors_name_the_missing_and_the_extra_columns():
    with pytest.raises(IncompatibleInput, match=r"lacks column\(s\) b, c of the spec's 3 features; its other columns are x, y"):
        read_inputs(b"a,x,y\n1,2,3\n", TABULAR, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match=r"4 columns \(a, b, c, d\); the model takes 3 features, and no column is named like a label"):
        read_inputs(b"a,b,c,d\n1,2,3,4\n", NO_NAMES, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match="5 columns, one of them the label column 'target'; the model takes 3"):
        read_inputs(b"a,b,c,d,target\n1,2,3,4,0\n", NO_NAMES, filename="rows.csv")
    with pytest.raises(IncompatibleInput, match="4 columns and no header; the model takes 3"):
        read_inputs(b"1,2,3,4\n", NO_NAMES, filename="rows.csv")


# --------------------------------------------------------------------------
# the CLI's --inputs folder (issue 20, item 8.3)
# --------------------------------------------------------------------------
def _inputs_folder(tmp_path):
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.csv").write_bytes(b"c,a,b\n9,3,2\n")
    (folder / "a.csv").write_bytes(b"a,b,c,label\n1,2,3,1\n5,6,7,0\n")
    (folder / "c.npy").write_bytes(_npy(np.zeros((1, 3), np.float32)))
    (folder / ".hidden.csv").write_bytes(b"not,a,csv\n")
    (folder / "notes.md").write_text("# not an input")
    (folder / "sub" / "d.csv").write_bytes(b"a,b,c\n0,0,0\n")  # subfolders are not read
    return folder


def test_an_inputs_folder_gives_its_input_files_in_name_order(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from explain.cli import model_arg
    from explain.errors import UsageError

    folder = _inputs_folder(tmp_path)
    assert [f.name for f in model_arg.input_files(str(folder))] == ["a.csv", "b.csv", "c.npy"]
    assert [f.name for f in model_arg.input_files(str(folder), "image")] == ["c.npy"]  # only what an image model reads
    assert model_arg.input_files(str(folder / "a.csv")) == [folder / "a.csv"]
    batch = model_arg.read_inputs_arg(str(folder), SimpleNamespace(spec=TABULAR))
    np.testing.assert_allclose(batch.array[:, 0], [0.0, 2.0, 1.0, 0.0])  # (a - 1) / 2 for the CSVs; the .npy is model-ready
    assert batch.source_names == ["a.csv:1", "a.csv:2", "b.csv:1", "c.npy[0]"] and batch.labels is None
    with pytest.raises(UsageError, match="No such inputs file or folder"):
        model_arg.input_files(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="has no input files for a text model"):
        model_arg.input_files(str(folder / "sub"), "text")
    monkeypatch.setattr(model_arg, "MAX_INPUT_FILES", 2)
    with pytest.raises(UsageError, match="has 3 input files, over the 2 that --inputs reads.*batch"):
        model_arg.input_files(str(folder))


def test_cli_inspect_reads_an_inputs_folder(tmp_path, capsys):
    import json

    from explain.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("2.png", (0, 0, 255)), ("1.png", (255, 0, 0))):
        (folder / name).write_bytes(_png(Image.new("RGB", (32, 32), colour)))
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    assert main(["inspect", "shapes", "--inputs", str(folder)]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)["inputs"]
    assert out["shape"] == [2, 3, 32, 32] and out["sources"] == ["1.png", "2.png"]
    assert main(["inspect", "shapes", "--inputs", str(tmp_path / "nothing")]) == 2
    assert "No such inputs file or folder" in capsys.readouterr().err


def test_an_inputs_folder_of_arrays_tells_the_spec_of_a_bare_model(tmp_path, capsys):
    import json

    import torch
    from safetensors.torch import save_file

    from explain.cli import main
    from explain.loading.architectures import build_architecture

    torch.manual_seed(0)
    model = build_architecture("tabular_mlp").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    arrays, rows = tmp_path / "arrays", tmp_path / "rows"
    arrays.mkdir()
    rows.mkdir()
    (arrays / "b.npy").write_bytes(_npy(np.ones((2, 30), np.float32)))
    (arrays / "a.npy").write_bytes(_npy(np.zeros((3, 30), np.float32)))
    (rows / "a.csv").write_bytes(b",".join(f"f{i}".encode() for i in range(30)) + b"\n" + b",".join([b"0"] * 30) + b"\n")
    assert main(["inspect", str(tmp_path / "bare.safetensors"), "--inputs", str(arrays)]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["modality"] == "tabular" and out["inputs"]["shape"] == [5, 30]
    assert out["inputs"]["sources"][0] == "a.npy[0]"
    assert main(["inspect", str(tmp_path / "bare.safetensors"), "--inputs", str(rows)]) == 3
    assert "rows holds no .npy/.npz array" in capsys.readouterr().err
