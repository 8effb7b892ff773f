"""Compressed models (issue 24): graphs cast to fp16 / bf16 load and explain in every format Glassbox
reads — TorchScript, ``.pt2`` and a Hugging Face folder, each in its sandboxed model process — with
float32 inputs cast to the graph's dtype and attributions in float32; compared with the float
model they agree away from the decision boundary and rank their maps alike. An int8-quantised
TorchScript file is refused, and the refusal names the operator that is missing."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from explain.compare.comparison import compare_models
from explain.errors import UnsafeFile
from explain.loading.loader import load_model
from explain.model import LoadedModel, graph_float_dtype
from explain.spec import InputSpec

SPEC = InputSpec("image", (3, 8, 8), class_names=["a", "b", "c"])


def cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """Inputs the float model classifies with a margin (away from the decision boundary)."""
    x = np.random.default_rng(4).normal(size=(64, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        top2 = torch.softmax(cnn()(torch.from_numpy(x)), 1).topk(2).values.numpy()
    return x[(top2[:, 0] - top2[:, 1]) > 0.05][:8]


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    return LoadedModel(cnn(), "safetensors", "float", SPEC)


def _half_file(tmp_path, fmt: str, dtype: torch.dtype) -> str:
    half = copy.deepcopy(cnn()).to(dtype)
    example = torch.zeros(2, 3, 8, 8, dtype=dtype)
    if fmt == "torchscript":
        path = tmp_path / "half.pt"
        torch.jit.save(torch.jit.trace(half, example[:1]), str(path))
    else:
        path = tmp_path / "half.pt2"
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(half, (example,), dynamic_shapes=({0: batch},)), str(path))
    return str(path)


def test_graph_float_dtype_names_only_a_whole_cast():
    assert graph_float_dtype(cnn()) is None
    assert graph_float_dtype(copy.deepcopy(cnn()).half()) == "float16"
    assert graph_float_dtype(copy.deepcopy(cnn()).bfloat16()) == "bfloat16"
    mixed = copy.deepcopy(cnn())
    mixed[0].half()
    assert graph_float_dtype(mixed) is None


@pytest.mark.parametrize("fmt, dtype, min_rho", [("torchscript", torch.float16, 0.99), ("export", torch.float16, 0.99),
                                                 ("torchscript", torch.bfloat16, 0.95)])
def test_half_precision_graph_loads_and_explains_like_the_float_model(tmp_path, inputs, reference, fmt, dtype, min_rho):
    assert len(inputs) >= 4
    model = load_model(_half_file(tmp_path, fmt, dtype), sample_input=inputs[:1])  # no spec: the array tells it
    assert model.process is not None and model.format == fmt  # the graph runs in its sandboxed process
    result = compare_models(reference, model, inputs, "integrated_gradients", {"steps": 16})
    d = result.to_dict()
    assert d["outputs"]["agreement"] == 1.0 and d["outputs"]["flipped"] == []
    assert min(d["attributions"]["rank_correlation"]) >= min_rho
    assert result.attributions.b.values.dtype == np.float32
    assert np.isfinite(result.attributions.b.values).all()
    assert result.structure.b.dtypes == [str(dtype).removeprefix("torch.")]
    assert d["structure"]["parameters"][0] == d["structure"]["parameters"][1]
    assert d["structure"]["flops"][0] == d["structure"]["flops"][1] > 0


def test_fp16_hugging_face_folder_loads_and_explains(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64,
                                 id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    vit = transformers.ViTForImageClassification(cfg).eval()
    for name, module in (("f32", vit), ("f16", copy.deepcopy(vit).half())):
        module.save_pretrained(tmp_path / name)
        (tmp_path / name / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    full, half = load_model(str(tmp_path / "f32")), load_model(str(tmp_path / "f16"))
    x = np.random.default_rng(5).normal(size=(16, 3, 16, 16)).astype(np.float32)
    probs = full.predict_proba(x)
    clear = x[np.abs(probs[:, 0] - probs[:, 1]) > 0.02][:4]
    d = compare_models(full, half, clear, "integrated_gradients", {"steps": 8}).to_dict()
    assert d["outputs"]["agreement"] == 1.0
    assert min(d["attributions"]["rank_correlation"]) >= 0.99
    assert d["structure"]["parameters"][0] == d["structure"]["parameters"][1]


def test_int8_quantised_torchscript_is_refused_naming_the_missing_operators(tmp_path):
    """Dynamic (int8 weights) and static (int8 activations too) quantisation: every quantized operator
    and packed-weight class the archive uses is named in the one refusal; nothing is admitted."""
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    dynamic = torch.ao.quantization.quantize_dynamic(cnn()[3:], {nn.Linear}, dtype=torch.qint8)
    torch.jit.save(torch.jit.trace(dynamic, torch.zeros(1, 4 * 64)), str(tmp_path / "dynamic.pt"))

    class Static(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.body, self.dequant = QuantStub(), cnn(), DeQuantStub()

        def forward(self, x):
            return self.dequant(self.body(self.quant(x)))

    static = Static().eval()
    static.qconfig = get_default_qconfig("fbgemm")
    prepared = prepare(static)
    prepared(torch.randn(8, 3, 8, 8))  # calibration
    torch.jit.save(torch.jit.trace(convert(prepared), torch.randn(1, 3, 8, 8)), str(tmp_path / "static.pt"))
    expected = {"dynamic.pt": ["quantized::linear_dynamic", "torch.classes.quantized.LinearPackedParamsBase"],
                "static.pt": ["aten::quantize_per_tensor", "quantized::conv2d", "quantized::linear",
                              "torch.classes.quantized.Conv2dPackedParamsBase"]}
    for name, names in expected.items():
        with pytest.raises(UnsafeFile) as refused:
            load_model(str(tmp_path / name), sample_input=np.zeros((1, 3, 8, 8), np.float32))
        assert all(n in refused.value.reason for n in names), refused.value.reason
        assert "fp16/bf16" in refused.value.hint
