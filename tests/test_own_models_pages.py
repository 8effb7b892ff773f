"""A new user's own Hugging Face models, traced and exported, on the pages (issue 20), without a browser.

What broke when such models were brought as a user brings them, each kept working here:

- a TorchScript trace of a Hugging Face RoBERTa (ids -> logits) given a spec JSON with only its
  ``tokenizer.json``: texts were refused ("The spec has no vocabulary") and padded with ``<s>``;
  the Overview showed its uncapturable attention as a red error;
- a Hugging Face ViT exported to ``.pt2`` with a dynamic batch: Structure > Rank layers failed
  (Captum hooked a module whose first input is the symbolic batch size);
- the report's model card did not name an image model's preprocessing;
- a safetensors file of an unknown architecture named other tensors on each run.

One model per modality (module-scoped), AppTest only; predictions compared with transformers' own.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from foreign_models import write_hf_roberta
from PIL import Image
from streamlit.testing.v1 import AppTest
from torch import nn

from ui.state import UploadedBlob

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["the movie was very good", "not a great film at all"]
#: the ViT's own processor: 16 x 16, not transformers' default 224, its own mean / std
VIT_PROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "resample": 2}


class _Logits(nn.Module):
    """What a user traces or exports: the Hugging Face model's forward, ids or pixels -> logits."""

    def __init__(self, model: nn.Module, pad_id: int | None = None):
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_id is None:
            return self.model(pixel_values=x).logits
        return self.model(input_ids=x, attention_mask=(x != self.pad_id).long()).logits


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from transformers import RobertaForSequenceClassification, ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("own_models_pages")
    roberta = write_hf_roberta(root / "my-roberta")
    hf = RobertaForSequenceClassification.from_pretrained(roberta, attn_implementation="eager").eval()
    torch.jit.trace(_Logits(hf, pad_id=1).eval(), torch.randint(3, 20, (2, 32)), strict=False).save(
        str(root / "roberta.ts.pt"))
    (root / "roberta.spec.json").write_text(json.dumps({  # what the user writes: the tokenizer, no vocabulary
        "modality": "text", "input_shape": [32], "class_names": ["neg", "pos"],
        "tokenizer": (roberta / "tokenizer.json").read_text()}))
    (root / "reviews.txt").write_text("\n".join(TEXTS) + "\n")

    torch.manual_seed(1)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, id2label={0: "cat", 1: "dog", 2: "fox"},
                    label2id={"cat": 0, "dog": 1, "fox": 2})
    vit = ViTForImageClassification(cfg).eval()
    vit.save_pretrained(root / "my-vit")
    (root / "my-vit" / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(_Logits(vit).eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(root / "vit.pt2"))
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate(((45, 31), (23, 50))):  # odd sizes
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(root / f"photo{i}.png")
    return root


def _blob(path: Path) -> UploadedBlob:
    data = path.read_bytes()
    return UploadedBlob(path.name, data, hashlib.sha256(data).hexdigest())


def _app(model: Path, inputs: list[Path], spec: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = _blob(model)
    at.session_state["gb_input_uploads"] = [_blob(p) for p in inputs]
    if spec is not None:
        at.session_state["gb_spec_upload"] = _blob(spec)
    return at


def _opens(at: AppTest, page: str) -> list[str]:
    """No exception element and no error on the page; its text, Markdown escapes removed."""
    assert not at.exception, (page, [e.value for e in at.exception])
    assert not at.error, (page, [e.value for e in at.error])
    return [e.value.replace("\\", "") for kind in ("caption", "markdown", "info", "warning") for e in at.get(kind)]


def test_a_text_torchscript_whose_spec_carries_only_its_tokenizer(files):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    from explain import load_model, read_inputs

    model = load_model(files / "roberta.ts.pt", spec=files / "roberta.spec.json")
    ids = read_inputs(files / "reviews.txt", model.spec).array
    own = Tokenizer.from_file(str(files / "my-roberta" / "tokenizer.json"))
    for row, text in zip(ids, TEXTS):  # the tokenizer's ids, then <pad> (id 1), not <s> (id 0)
        want = own.encode(text).ids
        assert row.tolist() == want + [1] * (32 - len(want))
    tok = AutoTokenizer.from_pretrained(files / "my-roberta")
    hf = RobertaForSequenceClassification.from_pretrained(files / "my-roberta", attn_implementation="eager").eval()
    with torch.no_grad():
        want = hf(**tok(TEXTS, padding="max_length", max_length=32, return_tensors="pt")).logits.softmax(-1).numpy()
    np.testing.assert_allclose(model.predict_proba(ids), want, atol=1e-5, rtol=0)

    at = _app(files / "roberta.ts.pt", [files / "reviews.txt"], files / "roberta.spec.json")
    at.run()  # the Overview
    shown = _opens(at, "Overview")
    assert any("no nn.MultiheadAttention" in i.value.replace("\\", "") for i in at.main.info), shown  # not an error
    at.switch_page("pages/views/output.py")
    at.run()
    shown = " ".join(_opens(at, "Output"))
    assert "torchscript · text · 2 inputs" in shown and "completeness error" in shown
    assert "the movie was very good" in shown and "Ġ" not in shown


def test_a_vit_exported_to_pt2_ranks_its_layers_and_names_its_defaults(files):
    from transformers import AutoImageProcessor, ViTForImageClassification

    from explain import load_model, read_inputs
    from explain.inputs.images import describe_preprocessing
    from explain.report.sections import build_report

    pictures = [files / "photo0.png", files / "photo1.png"]
    spec = {"modality": "image", "input_shape": [3, 16, 16], "class_names": ["cat", "dog", "fox"],
            "image_processor": VIT_PROCESSOR}
    (files / "vit.spec.json").write_text(json.dumps(spec))
    model = load_model(files / "vit.pt2", spec=spec)
    batch = read_inputs([str(p) for p in pictures], model.spec)
    processor = AutoImageProcessor.from_pretrained(files / "my-vit")
    hf = ViTForImageClassification.from_pretrained(files / "my-vit").eval()
    with torch.no_grad():
        pixels = processor([Image.open(p) for p in pictures], return_tensors="pt")["pixel_values"]
        np.testing.assert_allclose(model.predict_proba(batch.array), hf(pixel_values=pixels).logits.softmax(-1).numpy(),
                                   atol=1e-5, rtol=0)
    card = build_report(model, batch, methods=[]).section("Model card")
    assert "image preprocessing" in card.body and "ViTImageProcessor" in describe_preprocessing(model.spec)

    at = _app(files / "vit.pt2", pictures, files / "vit.spec.json")
    at.switch_page("pages/views/structure.py")
    at.run()
    at.button(key="gb_imp_run").click().run()  # Layer importance: Rank layers
    shown = _opens(at, "Structure")
    layer = at.selectbox(key=next(s.key for s in at.selectbox if s.key.startswith("gb_cam_layer_"))).value
    assert f"Grad-CAM of layer {layer}" in shown, shown
    assert any("rollout share" in c.proto.spec for c in at.get("plotly_chart"))  # the [CLS] rollout over the picture
    at.switch_page("pages/views/output.py")
    at.run()
    at.multiselect(key="gb_methods").set_value(["grad_cam", "shap_deep"]).run()
    shown = " ".join(_opens(at, "Output"))
    assert f"layer: {layer}" in shown and "background: " in shown and "Preprocessing: the model's own ViTImageProcessor" in shown


def test_an_unknown_architectures_refusal_names_the_same_tensors_every_time(tmp_path):
    from safetensors.torch import save_file

    from explain.loading.loader import load_model
    from explain.loading.weights import WeightsRefused

    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mlp.safetensors"))
    reasons = set()
    for _ in range(4):
        with pytest.raises(WeightsRefused) as info:
            load_model(tmp_path / "mlp.safetensors")
        reasons.add(info.value.reason)
    assert len(reasons) == 1 and "(0.bias, 0.weight, 2.bias, …)" in reasons.pop()  # the header's order


def test_a_torchscript_mixing_its_rows_is_said_in_the_sidebar(tmp_path):
    """A graph whose rows' outputs depend on the batch (``x - x.mean(0)``) runs one row at a time
    (`GraphProbe.rows_mix`); the sidebar's model card says so, and the page opens."""
    from torch import nn

    from explain.spec import SPEC_FILENAME, InputSpec

    class Centring(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 4] -> [B, 2]
            return self.fc(x - x.mean(0, keepdim=True))

    torch.manual_seed(0)
    spec = InputSpec("tabular", (4,), class_names=["no", "yes"], name="centring")
    path, rows = tmp_path / "centring.pt", tmp_path / "rows.npy"
    torch.jit.save(torch.jit.script(Centring().eval()), str(path), _extra_files={SPEC_FILENAME: spec.to_json()})
    np.save(rows, np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    at = _app(path, [rows])
    at.run()
    shown = " ".join(_opens(at, "Overview"))
    assert "depends on the other rows of its batch" in " ".join(c.value for c in at.sidebar.caption), shown
