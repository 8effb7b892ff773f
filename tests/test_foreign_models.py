"""A model Glassbox did not make, with no spec anywhere, explained from the CLI.

One resolution for every subcommand (`explain.loading.loader.resolve_spec`):
--spec > the file's spec > a .pt2's signature > the --inputs arrays > a refusal naming the flags.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from foreign_models import write_foreign_models

from explain.cli import main
from explain.errors import IncompatibleInput
from explain.loading.loader import load_model, resolve_spec
from explain.spec import (
    InputSpec,
    SpecGuess,
    SpecNeeded,
    build_spec,
    infer_spec,
    parse_names,
    parse_shape,
    parse_vocabulary,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return write_foreign_models(tmp_path_factory.mktemp("foreign"))


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


# -- the CLI with only --inputs ------------------------------------------------------------------
def test_attribute_a_torchscript_cnn_with_only_inputs(foreign, capsys):
    out = foreign / "a.npz"
    code, payload, err = _cli(capsys, "attribute", foreign / "cnn.ts.pt", "--inputs", foreign / "img.npy",
                              "--method", "integrated_gradients", "--out", out)
    assert code == 0, err
    assert len(payload["completeness_error"]) == 2
    assert all(e is not None and e < 0.05 for e in payload["completeness_error"]), payload["completeness_error"]
    with np.load(out) as saved:
        assert saved["values"].shape == (2, 3, 8, 8)


def test_inspect_a_pt2_alone_reads_the_input_shape_from_its_signature(foreign, capsys):
    code, payload, err = _cli(capsys, "inspect", foreign / "mlp.pt2")
    assert code == 0, err
    assert payload["modality"] == "tabular" and payload["input_shape"] == [5] and payload["dtype"] == "float32"
    assert payload["spec_source"] == "signature"
    assert payload["signature"]["input_shape"] == [None, 5] and payload["signature"]["dynamic_dims"] == [0]
    code, payload, err = _cli(capsys, "attribute", foreign / "mlp.pt2", "--inputs", foreign / "tab.npy",
                              "--method", "saliency", "--out", foreign / "s.npz")
    assert code == 0, err
    assert payload["shape"] == [3, 5]


def test_a_pt2_with_an_open_length_needs_inputs_and_says_which_dim(foreign, capsys):
    code, _, err = _cli(capsys, "inspect", foreign / "txt.pt2")
    assert code == 3
    assert "dim 1 of [*, *] open" in err and "--spec" in err and "--inputs" in err
    assert err.count("\n") == 1
    code, payload, err = _cli(capsys, "inspect", foreign / "txt.pt2", "--inputs", foreign / "ids.npy")
    assert code == 0, err
    assert payload["modality"] == "text" and payload["input_shape"] == [6] and payload["spec_source"] == "inputs"
    assert payload["signature"]["dynamic_dims"] == [0, 1]


def test_attention_and_report_for_a_torchscript_text_model_with_only_inputs(foreign, capsys):
    code, payload, err = _cli(capsys, "attention", foreign / "txt.ts.pt", "--inputs", foreign / "ids.npy",
                              "--out", foreign / "att.npz")
    assert code == 0, err
    assert (payload["layers"], payload["heads"], payload["tokens"]) == (1, 2, 6)
    with np.load(foreign / "att.npz") as saved:
        assert saved["attention"].shape == (1, 2, 2, 6, 6)
    code, payload, err = _cli(capsys, "report", foreign / "txt.ts.pt", "--inputs", foreign / "ids.npy",
                              "--methods", "feature_ablation", "--out", foreign / "r.html")
    assert code == 0, err
    assert not payload["failed"], payload["failed"]
    assert "Attention" in payload["sections"]


def test_methods_takes_inputs_and_every_refusal_names_what_to_give(foreign, capsys):
    code, payload, err = _cli(capsys, "methods", foreign / "cnn.ts.pt", "--inputs", foreign / "img.npy")
    assert code == 0, err
    assert payload["modality"] == "image" and "integrated_gradients" in {m["name"] for m in payload["methods"]}
    for argv in (["methods", foreign / "cnn.ts.pt"],
                 ["attribute", foreign / "cnn.ts.pt", "--inputs", foreign / "shot.png", "--method", "saliency",
                  "--out", foreign / "x.npz"]):
        (foreign / "shot.png").write_bytes(PNG)
        code, _, err = _cli(capsys, *argv)
        assert code == 3 and err.count("\n") == 1
        assert "carries no input spec" in err and "--spec" in err and "--inputs" in err, err
    assert "shot.png is not a .npy/.npz array" in err


# -- resolution order and the spec's own checks ---------------------------------------------------
def test_resolution_order_explicit_embedded_signature_inputs():
    explicit = InputSpec("tabular", (5,), class_names=["a", "b"], name="explicit")
    embedded = InputSpec("tabular", (5,), name="embedded")
    signature = SpecGuess((5,), "float32", "the .pt2 signature", "tabular")
    open_signature = SpecGuess((None,), "int64", "the .pt2 signature", "text")
    ids = np.zeros((2, 7), np.int64)
    assert resolve_spec(explicit, embedded, ids, signature=signature) == (explicit, "explicit")
    assert resolve_spec(None, embedded, ids, signature=signature) == (embedded, "embedded")
    assert resolve_spec(None, None, ids, signature=signature)[1] == "signature"
    spec, source = resolve_spec(None, None, ids, signature=open_signature)
    assert source == "inputs" and spec.modality == "text" and spec.input_shape == (7,) and spec.dtype == "int64"
    with pytest.raises(SpecNeeded) as refused:
        resolve_spec(None, None, None, signature=open_signature)
    assert refused.value.guess == open_signature and "dim 1" in refused.value.reason
    with pytest.raises(SpecNeeded) as refused:  # inputs that fit no modality: the guess keeps their shape
        resolve_spec(None, None, np.zeros((2, 5, 7), np.float32))
    assert refused.value.guess.input_shape == (5, 7)


def test_a_model_without_spec_or_inputs_is_refused_with_a_guess_from_its_layers(foreign):
    with pytest.raises(SpecNeeded) as refused:
        load_model(foreign / "cnn.ts.pt")
    assert refused.value.guess.modality == "image" and refused.value.guess.input_shape == (3, None, None)
    with pytest.raises(SpecNeeded) as refused:
        load_model(foreign / "txt.ts.pt")
    assert refused.value.guess.modality == "text" and refused.value.guess.dtype == "int64"


def test_a_text_spec_without_dtype_feeds_integer_ids(foreign):
    """Used to end in RuntimeError: Expected tensor for argument #1 'indices' ... (float32 ids)."""
    model = load_model(foreign / "txt.ts.pt", spec={"modality": "text", "input_shape": [6]})
    assert model.spec.dtype == "int64"
    assert model.predict_proba(np.load(foreign / "ids.npy")).shape == (2, 2)
    with pytest.raises(IncompatibleInput, match="integer token ids"):
        InputSpec.from_dict({"modality": "text", "input_shape": [6], "dtype": "float32"})
    assert InputSpec("image", (3, 8, 8)).dtype == "float32"
    with pytest.raises(IncompatibleInput, match=r"\[C, H, W\]"):
        InputSpec("image", (8, 8))


def test_infer_spec_follows_the_design_rule():
    assert infer_spec(np.zeros((2, 3, 8, 8), np.float32)).modality == "image"
    assert infer_spec(np.zeros((2, 30), np.float64)).modality == "tabular"
    text = infer_spec(np.zeros((2, 16), np.int32))
    assert (text.modality, text.input_shape, text.dtype) == ("text", (16,), "int64")
    with pytest.raises(IncompatibleInput):
        infer_spec(np.zeros((2, 4, 4), np.float32))


def test_the_spec_form_fields_parse_and_check():
    assert parse_shape("3, 32, 32") == parse_shape("3x32x32") == parse_shape("[3, 32, 32]") == (3, 32, 32)
    for bad in ("3, ?, ?", "*, 16", "", "three"):
        with pytest.raises(IncompatibleInput):
            parse_shape(bad)
    assert parse_names("cat, dog") == parse_names("cat\ndog\n") == ["cat", "dog"]
    assert parse_vocabulary(b"<pad>\n<unk>\nhi\n") == ["<pad>", "<unk>", "hi"]
    assert parse_vocabulary(b'{"hi": 1, "<pad>": 0}') == ["<pad>", "hi"]
    assert parse_vocabulary(b'["<pad>", "a"]') == ["<pad>", "a"]
    spec = build_spec("tabular", "3", "no, yes", "age\nsize\nweight", name="m")
    assert spec.to_dict()["feature_names"] == ["age", "size", "weight"] and spec.class_names == ["no", "yes"]
    assert json.loads(spec.to_json(indent=2))["input_shape"] == [3]
    with pytest.raises(IncompatibleInput, match="2 feature names for 3 features"):
        build_spec("tabular", "3", "", "a, b")
    with pytest.raises(IncompatibleInput, match="repeat"):
        build_spec("image", "3, 8, 8", "cat, cat")
