"""A Hugging Face Vision Transformer on the Structure page and in the report: the attention rollout
from [CLS] drawn over the image, patches named by (row, col), the layer table deep enough to show the
encoder layers' submodules. A tiny ViT built from its config (no hub)."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, dict):
        import base64

        shape = tuple(int(d) for d in str(value["shape"]).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


@pytest.fixture(scope="module")
def vit_zip(tmp_path_factory) -> bytes:
    """A ViT on 16 x 16 images with 8 x 8 patches: [CLS] + a 2 x 2 grid, as a zip's bytes."""
    torch.manual_seed(1)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64,
                    id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2})
    path = tmp_path_factory.mktemp("hf") / "vit"
    ViTForImageClassification(cfg).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.25] * 3, "size": {"height": 16, "width": 16}}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in path.iterdir():
            zf.write(f, f.name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def vit(vit_zip):
    from explain.loading.loader import load_model

    return load_model(vit_zip, filename="vit.zip")


def test_the_vit_rollout_is_a_map_on_its_patch_grid(vit, images):
    from explain.structure.attention import capture_attention, image_rollout, patch_grid
    from explain.structure.attention_summary import compute_rollout

    maps = capture_attention(vit, images[:1])
    grid = patch_grid(maps.num_tokens, vit.spec.input_shape)
    assert (grid.rows, grid.cols, grid.extra) == (2, 2, 1)
    patches, heat = image_rollout(maps.weights[:, 0], grid, 16, 16)
    roll = compute_rollout(maps.weights[:, [0]])[0]
    np.testing.assert_allclose(patches.ravel(), roll[0, 1:])  # [CLS]'s row without [CLS], row-major
    np.testing.assert_allclose(heat[:8, 8:], patches[0, 1])  # patch (0, 1): the top-right square
    np.testing.assert_allclose(heat[8:, :8], patches[1, 0])


def test_the_report_draws_the_vit_rollout_over_input_0(vit, images):
    from explain.report.sections import build_report

    report = build_report(vit, images, methods=(), quality=[])
    section = next(s for s in report.sections if s.title == "Attention")
    assert section.error is None, section.error
    assert section.data["patch_grid"] == [2, 2] and section.data["extra_tokens"] == 1
    assert section.data["patch_labels"] == ["(0, 0)", "(0, 1)", "(1, 0)", "(1, 1)"]
    rollout = np.asarray(section.data["rollout"])
    assert rollout.shape == (2, 2) and 0 < rollout.sum() < 1  # [CLS] keeps the rest
    heat = section.figures[-1].data[-1]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (16, 16)
    np.testing.assert_allclose(np.asarray(heat.z)[8:, 8:], rollout[1, 1], atol=1e-4)  # the shares themselves
    assert heat.colorbar.title.text == "rollout share" and heat.zmin == 0
    assert "2×2 patches of input #0" in section.body
    # the attention maps' axes name the positions as the Structure page does: [CLS], then (row, col)
    labels = ["[CLS]", "(0, 0)", "(0, 1)", "(1, 0)", "(1, 1)"]
    assert section.data["tokens"] == labels
    grid = section.figures[0]
    assert all(list(t.x) == labels and list(t.y) == labels for t in grid.data)


def test_attention_tokens_name_patches_when_the_grid_fits(vit):
    """`explain.report.analysis.attention_tokens`, which the report and the Overview cut their maps with:
    an image model's positions by (row, col) when they are [CLS] + patches of the picture, else numbers."""
    from explain.report.analysis import attention_tokens

    tokens, keep = attention_tokens(vit, np.zeros((3, 16, 16)), 5)
    assert tokens == ["[CLS]", "(0, 0)", "(0, 1)", "(1, 0)", "(1, 1)"] and keep == [0, 1, 2, 3, 4]
    assert attention_tokens(vit, np.zeros((3, 16, 16)), 4) == (["(0, 0)", "(0, 1)", "(1, 0)", "(1, 1)"], [0, 1, 2, 3])
    assert attention_tokens(vit, np.zeros((3, 16, 16)), 3) == (["0", "1", "2"], [0, 1, 2])  # no grid of 16 x 16 fits


def test_structure_page_draws_the_rollout_on_the_image_and_lists_encoder_layer_submodules(vit_zip, images):
    from streamlit.testing.v1 import AppTest

    from ui.state import UploadedBlob

    buf = io.BytesIO()
    np.save(buf, images)
    arrays = buf.getvalue()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("vit.zip", vit_zip, hashlib.sha256(vit_zip).hexdigest())
    at.session_state["gb_input_uploads"] = [UploadedBlob("x.npy", arrays, hashlib.sha256(arrays).hexdigest())]
    at.switch_page("pages/views/structure.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    layers = {name.strip() for name in at.dataframe[0].value["layer"]}
    assert {"model.vit.layers.0.attention", "model.vit.layers.0.mlp"} <= layers  # the blocks' submodules
    charts = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    grid = charts["gb_att_grid"]
    axis = [t for trace in grid["data"] for t in (trace.get("x") or [])]
    assert "[CLS]" in axis and "(1, 1)" in axis and "0" not in axis  # patches by (row, col)
    image, heat = charts["gb_att_rollout_image"]["data"]
    assert image["type"] == "image" and heat["type"] == "heatmap"
    z = _array(heat["z"])
    assert z.shape == (16, 16) and heat["zmin"] == 0 and heat["zmax"] == pytest.approx(z.max())  # 0 to the peak share
    assert 0 < z.max() < 1 and heat["colorbar"]["title"]["text"] == "rollout share"  # the shares, not rescaled
    assert "[CLS]" in json.dumps(charts["gb_att_rollout_image"]["layout"]["title"])
    assert not any("position 0" in json.dumps(c.get("layout", {}).get("title", "")) for c in charts.values())
