"""The shipped sample models: accuracy, format equivalence, checkpoints, data.

Uses the files committed under ``sample_models/`` (no retraining). The shipped
files are our own, so this test reads them with the plain torch loaders; the
safe upload path (`explain.loading.loader`) is exercised through `load_sample`.
"""
from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from explain.errors import IncompatibleInput, UsageError
from explain.loading.architectures import build_architecture, default_config, list_architectures
from explain.spec import SPEC_FILENAME, InputSpec
from sample_models import SAMPLE_NAMES, data, load_sample, sample_dir, sample_file, sample_inputs

FLOORS = {"shapes": 0.9, "cancer": 0.95, "sentiment": 0.9}
ARCHITECTURES = {"shapes": "shapes_resnet", "cancer": "tabular_mlp", "sentiment": "text_transformer"}


@cache
def eager(name: str) -> torch.nn.Module:
    """The sample rebuilt from model.safetensors (registry + strict state dict)."""
    path = sample_dir(name) / "model.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    model = build_architecture(meta["glassbox.architecture"], json.loads(meta["glassbox.config"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def as_tensor(name: str) -> torch.Tensor:
    return torch.from_numpy(sample_inputs(name)["inputs"])


# --------------------------------------------------------------------------
# accuracy and formats
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_accuracy_on_shipped_held_out_samples(name):
    arrays = sample_inputs(name)
    assert len(arrays["labels"]) >= 16
    with torch.no_grad():
        pred = eager(name)(torch.from_numpy(arrays["inputs"])).argmax(1).numpy()
    acc = float((pred == arrays["labels"]).mean())
    print(f"{name}: accuracy {acc:.4f} on {len(pred)} shipped held-out samples")
    assert acc >= FLOORS[name]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_load_sample_goes_through_explain_loading(name):
    model = load_sample(name)  # safetensors
    assert model.format == "safetensors" and model.architecture == ARCHITECTURES[name]
    assert model.name == name and model.spec.to_dict() == json.loads((sample_dir(name) / "spec.json").read_text())
    x = sample_inputs(name)["inputs"]
    with torch.no_grad():
        want = eager(name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict_logits(x), want, atol=1e-6)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_torchscript_equals_eager_and_carries_the_spec(name):
    extra = {SPEC_FILENAME: ""}
    scripted = torch.jit.load(str(sample_file(name, "torchscript")), _extra_files=extra)
    assert InputSpec.from_json(extra[SPEC_FILENAME]).to_dict() == load_sample_spec(name)
    x = as_tensor(name)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(name)(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(scripted(x[:3]), eager(name)(x[:3]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_export_dynamic_batch_equals_eager(name):
    extra = {SPEC_FILENAME: ""}
    program = torch.export.load(str(sample_file(name, "export")), extra_files=extra)
    assert InputSpec.from_json(extra[SPEC_FILENAME]).to_dict() == load_sample_spec(name)
    module, x = program.module(), as_tensor(name)
    with torch.no_grad():
        for n in (1, 7, len(x)):  # the batch dimension is dynamic
            torch.testing.assert_close(module(x[:n]), eager(name)(x[:n]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_export_static_is_batch_one_and_equals_eager(name):
    program = torch.export.load(str(sample_file(name, "export_static")))
    (arg,) = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    shape = program.graph.find_nodes(op="placeholder", target=arg.arg.name)[0].meta["val"].shape
    assert int(shape[0]) == 1
    module, x = program.module(), as_tensor(name)
    with torch.no_grad():
        for i in range(4):
            torch.testing.assert_close(module(x[i : i + 1]), eager(name)(x[i : i + 1]), atol=1e-5, rtol=0)


def load_sample_spec(name: str) -> dict:
    return json.loads((sample_dir(name) / "spec.json").read_text())


# --------------------------------------------------------------------------
# checkpoints, metadata, logs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_checkpoints_load_weights_only_from_different_epochs(name):
    paths = sorted((sample_dir(name) / "checkpoints").glob("epoch_*.pt"))
    assert len(paths) >= 4
    epochs, final_state = [], None
    for path in paths:
        ckpt = torch.load(path, weights_only=True)
        assert {"model_state_dict", "epoch", "history", "architecture", "config", "spec"} <= set(ckpt)
        assert ckpt["architecture"] == ARCHITECTURES[name]
        assert path.name == f"epoch_{ckpt['epoch']:02d}.pt"
        assert [row["epoch"] for row in ckpt["history"]] == list(range(1, ckpt["epoch"] + 1))
        assert ckpt["spec"] == load_sample_spec(name)
        model = build_architecture(ckpt["architecture"], ckpt["config"])
        model.load_state_dict(ckpt["model_state_dict"], strict=True)
        epochs.append(ckpt["epoch"])
        final_state = ckpt["model_state_dict"]
    assert len(set(epochs)) == len(epochs)
    assert sample_file(name, "checkpoint") == paths[-1]
    for key, value in eager(name).state_dict().items():  # last checkpoint = final weights
        torch.testing.assert_close(final_state[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_safetensors_metadata_and_train_log(name):
    with safe_open(str(sample_file(name)), "pt") as fh:
        meta = fh.metadata()
    assert meta["glassbox.architecture"] == ARCHITECTURES[name]
    assert json.loads(meta["glassbox.spec"]) == load_sample_spec(name)
    assert set(json.loads(meta["glassbox.config"])) == set(default_config(ARCHITECTURES[name]))
    lines = (sample_dir(name) / "train_log.csv").read_text().strip().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,train_acc,val_acc,lr"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert len(rows) >= 8 and list(rows[:, 0]) == list(range(1, len(rows) + 1))
    assert len(np.unique(rows[:, 5])) >= 2 and rows[-1, 5] < rows[0, 5]  # an LR step decay


def test_shipped_files_are_small():
    root = sample_dir("shapes").parent
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 10 * 2**20


# --------------------------------------------------------------------------
# raw upload files match the model-ready samples
# --------------------------------------------------------------------------
def test_shapes_pngs_and_masks_match_samples():
    arrays, spec = sample_inputs("shapes"), load_sample_spec("shapes")
    assert arrays["inputs"].shape[1:] == (3, 32, 32) and arrays["masks"].shape[1:] == (32, 32)
    assert arrays["masks"].dtype == bool and 0.03 < arrays["masks"].mean() < 0.4
    assert np.bincount(arrays["labels"], minlength=4).min() == len(arrays["labels"]) // 4
    pngs = sorted((sample_dir("shapes") / "samples").glob("*.png"))
    assert len(pngs) >= 4
    mean, std = np.array(spec["mean"])[:, None, None], np.array(spec["std"])[:, None, None]
    for i, path in enumerate(pngs):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
        np.testing.assert_allclose((pixels - mean) / std, arrays["inputs"][i], atol=1.01 / 255 / 0.5)
        assert path.stem.split("_", 1)[1] == data.SHAPE_CLASSES[arrays["labels"][i]]


def test_cancer_csv_is_raw_and_standardises_to_samples():
    spec = load_sample_spec("cancer")
    path = sample_dir("cancer") / "samples.csv"
    assert path.read_text().splitlines()[0].split(",") == spec["feature_names"]
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    assert raw[:, 0].min() > 5  # "mean radius" in millimetres, not standardised
    ready = (raw - np.array(spec["mean"])) / np.array(spec["std"])
    np.testing.assert_allclose(ready, sample_inputs("cancer")["inputs"], atol=1e-3)


def test_sentiment_txt_tokenises_to_samples():
    spec = load_sample_spec("sentiment")
    assert spec["vocabulary"][:3] == ["<pad>", "<unk>", "<cls>"] and spec["cls_token"] == "<cls>"
    texts = (sample_dir("sentiment") / "samples.txt").read_text().splitlines()
    arrays = sample_inputs("sentiment")
    np.testing.assert_array_equal(data.tokenize(texts), arrays["inputs"])
    assert [data.sentiment_label(t.split()) for t in texts] == arrays["labels"].tolist()


# --------------------------------------------------------------------------
# data generators and the sentiment rule
# --------------------------------------------------------------------------
def test_generators_are_deterministic():
    a, b, c = data.make_shapes(12, seed=5), data.make_shapes(12, seed=5), data.make_shapes(12, seed=6)
    for field in ("images", "labels", "masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.float32 and 0 <= a.images.min() and a.images.max() <= 1
    s1, s2 = data.make_sentiment(50, seed=3), data.make_sentiment(50, seed=3)
    assert s1.texts == s2.texts and np.array_equal(s1.ids, s2.ids) and np.array_equal(s1.labels, s2.labels)
    k1, k2 = data.load_cancer(0), data.load_cancer(0)
    np.testing.assert_array_equal(k1.x_test, k2.x_test)
    np.testing.assert_allclose(k1.standardise(k1.x_train).mean(0), 0, atol=1e-5)


def test_shape_masks_cover_the_drawn_object():
    shapes = data.make_shapes(8, seed=1)
    for image, mask in zip(shapes.images, shapes.masks):
        inside = image[:, mask].mean(axis=1)  # object colour (nearly uniform)
        assert np.abs(image[:, mask] - inside[:, None]).mean() < 0.08
        assert np.linalg.norm(inside - image[:, ~mask].mean(axis=1)) > 0.2


@pytest.mark.parametrize(
    "text, label",
    [
        ("good", 1), ("not good", 0), ("bad", 0), ("not bad", 1),
        ("good film but bad acting and great music", 1), ("good bad awful", 0),
        ("not good and bad", 0), ("good and not bad", 1),  # "not" flips only the next word
        ("not the good film", 1),  # "not" before a filler word does nothing
    ],
)
def test_sentiment_label_rule(text, label):
    assert data.sentiment_label(text.split()) == label


def test_generated_sentiment_follows_the_rule_without_ties():
    s = data.make_sentiment(300, seed=9)
    assert s.ids.shape == (300, data.SEQ_LEN) and (s.ids[:, 0] == data.VOCABULARY.index("<cls>")).all()
    assert abs(s.labels.mean() - 0.5) < 0.01
    for text, label in zip(s.texts, s.labels):
        tokens = text.split()
        score = sum(
            (1 if t in data.POSITIVE_WORDS else -1) * (-1 if i and tokens[i - 1] == "not" else 1)
            for i, t in enumerate(tokens) if t in data.SENTIMENT_WORDS
        )
        assert score != 0 and int(score > 0) == label == data.sentiment_label(tokens)
    assert data.SENTIMENT_WORDS == set(data.POSITIVE_WORDS) | set(data.NEGATIVE_WORDS)
    assert any(" not " in f" {t} " for t in s.texts)


# --------------------------------------------------------------------------
# architecture registry
# --------------------------------------------------------------------------
def test_registry_builds_the_three_architectures():
    assert {"shapes_resnet", "tabular_mlp", "text_transformer"} <= set(list_architectures())
    resnet = build_architecture("shapes_resnet")
    assert 50_000 <= sum(p.numel() for p in resnet.parameters()) <= 150_000
    assert isinstance(resnet.layer3, torch.nn.Module)
    text = build_architecture("text_transformer")
    assert isinstance(text.encoder.layers[1].self_attn, torch.nn.MultiheadAttention)
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in build_architecture("tabular_mlp").modules())
    with pytest.raises(IncompatibleInput):
        build_architecture("no_such_architecture")
    with pytest.raises(IncompatibleInput):
        build_architecture("tabular_mlp", {"no_such_key": 1})
    with pytest.raises(UsageError):
        sample_dir("no_such_sample")
