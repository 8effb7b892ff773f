"""Pictures become the model's input the way the model was trained: its own Hugging Face image processor,
or the spec's resize and mean / std; and a warning when every prediction is one class at ~100 %."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from foreign_models import HF_RESNET_PREPROCESSOR, write_hf_resnet
from PIL import Image
from streamlit.testing.v1 import AppTest

import explain
from explain.errors import IncompatibleInput, UnsafeFile
from explain.inputs.images import check_image_processor, describe_preprocessing, preprocess_image
from explain.output.prediction_checks import one_class_warning
from explain.spec import InputSpec, build_spec
from ui.state import UploadedBlob

ROOT = Path(__file__).resolve().parent.parent


def _png(width: int, height: int, seed: int = 0) -> tuple[bytes, Image.Image]:
    img = Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), img


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    folder = write_hf_resnet(tmp_path_factory.mktemp("hf_resnet"))
    return folder, explain.load_model(folder)


def test_a_hf_image_model_is_fed_through_its_own_processor(resnet):
    from transformers import AutoImageProcessor, ResNetForImageClassification

    folder, model = resnet
    assert model.spec.input_shape == (3, 64, 64)  # the processor's crop, not the config's 224
    assert model.spec.mean == HF_RESNET_PREPROCESSOR["image_mean"]
    data, img = _png(120, 90)
    batch = explain.read_inputs(data, model.spec, filename="photo.png")
    want = AutoImageProcessor.from_pretrained(folder)(img, return_tensors="pt")["pixel_values"]  # [1, 3, 64, 64]
    np.testing.assert_array_equal(batch.array, want.numpy())
    hf = ResNetForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf(want).logits.softmax(-1).numpy()
    np.testing.assert_allclose(model.predict_proba(batch.array), expected, atol=1e-6)
    assert batch.originals[0].shape == (90, 120, 3)  # the picture as uploaded, kept for the page
    assert batch.display[0].shape == (64, 64, 3)  # the model's input, normalisation undone
    assert "shorter side to 64" in describe_preprocessing(model.spec)


def test_arrays_at_the_processors_size_are_model_ready(resnet):
    _, model = resnet
    assert explain.read_inputs(np.zeros((2, 3, 64, 64), np.float32), model.spec).array.shape == (2, 3, 64, 64)
    with pytest.raises(IncompatibleInput):
        explain.read_inputs(np.zeros((2, 3, 224, 224), np.float32), model.spec)


def test_the_spec_round_trips_its_preprocessing(resnet):
    _, model = resnet
    again = InputSpec.from_json(model.spec.to_json())
    assert again.image_processor == model.spec.image_processor and again.input_shape == (3, 64, 64)
    plain = InputSpec("image", (3, 8, 8)).to_dict()
    assert "resize" not in plain and "image_processor" not in plain  # specs without them stay as they were


def test_a_vit_processor_resizes_exactly_as_transformers():
    from transformers import ViTImageProcessor

    cfg = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 40, "width": 32},
           "resample": 2, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    spec = InputSpec("image", (3, 40, 32), image_processor=check_image_processor(cfg, "vit"),
                     mean=cfg["image_mean"], std=cfg["image_std"])
    _, img = _png(77, 51, seed=3)
    want = ViTImageProcessor(**{k: v for k, v in cfg.items() if k != "image_processor_type"})(img, return_tensors="np")
    np.testing.assert_array_equal(preprocess_image(img, spec), want["pixel_values"][0])


@pytest.mark.parametrize("bad, error", [
    ({**HF_RESNET_PREPROCESSOR, "auto_map": {"AutoImageProcessor": "evil.Processor"}}, UnsafeFile),
    ({**HF_RESNET_PREPROCESSOR, "size": {"shortest_edge": 10**6}}, IncompatibleInput),
    ({**HF_RESNET_PREPROCESSOR, "image_processor_type": "os.system"}, None),  # not a class name: the model type's
])
def test_a_preprocessor_config_is_checked_before_it_is_used(bad, error):
    if error is None:
        assert check_image_processor(bad, "resnet")["image_processor_type"] == "ConvNextImageProcessorPil"
        return
    with pytest.raises(error):
        check_image_processor(bad, "resnet")
    with pytest.raises(error):  # a spec from a user's JSON is checked the same way
        InputSpec("image", (3, 64, 64), image_processor=bad)


def test_a_remote_code_preprocessor_refuses_the_upload(resnet, tmp_path):
    folder, _ = resnet
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in folder.iterdir():
            data = f.read_bytes()
            if f.name == "preprocessor_config.json":
                data = json.dumps({**HF_RESNET_PREPROCESSOR, "auto_map": {"AutoImageProcessor": "x.Y"}}).encode()
            zf.writestr(f.name, data)
    with pytest.raises(UnsafeFile):
        explain.load_model(buf.getvalue(), filename="resnet.zip")


def test_the_spec_resizes_the_shorter_side_then_crops_the_centre():
    spec = build_spec("image", "3, 20, 20", mean="0.5", std="0.25", resize=24)
    assert spec.mean == [0.5, 0.5, 0.5] and spec.std == [0.25, 0.25, 0.25]
    _, img = _png(100, 50, seed=1)
    got = preprocess_image(img, spec)  # [3, 20, 20]
    scaled = img.resize((48, 24), Image.BILINEAR)  # shorter side 50 -> 24
    want = (np.asarray(scaled.crop((14, 2, 34, 22)), np.float32) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), atol=1e-6)
    stretched = preprocess_image(img, build_spec("image", "3, 20, 20"))
    np.testing.assert_allclose(stretched, np.asarray(img.resize((20, 20), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255)


@pytest.mark.parametrize("fields, message", [
    (dict(mean="0.5, 0.4", std="1, 1"), "2 values for 3 channels"),
    (dict(mean="0.5", std="0"), "zero"),
    (dict(mean="0.5"), "without a std"),
    (dict(mean="a, b, c", std="1"), "not a list of numbers"),
])
def test_bad_normalisation_fields_are_named(fields, message):
    with pytest.raises(IncompatibleInput, match=message):
        build_spec("image", "3, 8, 8", **fields)


def test_one_class_at_100_percent_is_flagged():
    spec = InputSpec("image", (3, 8, 8), class_names=["circle", "square"])
    saturated = np.array([[0.001, 0.999], [0.0, 1.0], [0.005, 0.995]])
    warning = one_class_warning(saturated, spec)
    assert warning and "'square'" in warning and "no mean/std" in warning
    assert one_class_warning(saturated[:1], spec) is None  # one input proves nothing
    assert one_class_warning(np.array([[0.001, 0.999], [0.999, 0.001]]), spec) is None  # two classes
    assert one_class_warning(np.array([[0.1, 0.9], [0.0, 1.0]]), spec) is None  # not saturated
    normalised = InputSpec("image", (3, 8, 8), mean=[0.5], std=[0.5], resize=10)
    assert "check the mean/std" in one_class_warning(saturated, normalised)


def test_the_spec_form_sets_resize_and_normalisation(tmp_path):
    from foreign_models import write_foreign_models

    foreign = write_foreign_models(tmp_path)
    data = (foreign / "cnn.ts.pt").read_bytes()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("cnn.ts.pt", data, hashlib.sha256(data).hexdigest())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="gb_spec_form_shape").input("3, 8, 8")
    at.selectbox(key="gb_spec_form_resize_mode").select_index(1)
    at.number_input(key="gb_spec_form_resize").set_value(10)
    at.selectbox(key="gb_spec_form_norm").select_index(1)  # ImageNet
    at.button(key="FormSubmitter:gb_spec_form-Use this spec").click().run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.session_state["gb_form_spec"].data)
    assert spec["resize"] == 10 and spec["mean"] == [0.485, 0.456, 0.406] and spec["std"] == [0.229, 0.224, 0.225]
