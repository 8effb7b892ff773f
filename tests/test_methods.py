"""Every registered attribution method on every compatible sample model.

The sample models (``sample_models``) are used when they are installed;
until then small randomly initialised stand-ins of the same architectures.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explain import InputSpec, LoadedModel
from explain.architectures import build_architecture
from explain.methods import all_methods, get_method

SAMPLES = ("shapes", "cancer", "sentiment")


def have_samples() -> bool:
    try:
        import sample_models

        sample_models.load_sample("cancer")
    except Exception:  # noqa: BLE001 - absent or not built yet
        return False
    return True


def load_case(name: str, n: int = 4, fmt: str = "safetensors") -> tuple[LoadedModel, np.ndarray]:
    """(model, first n model-ready inputs) for a sample, or a seeded stand-in."""
    if have_samples():
        import sample_models

        model = sample_models.load_sample(name, fmt=fmt)
        return model, np.asarray(sample_models.sample_inputs(name)["inputs"][:n])
    if fmt != "safetensors":
        pytest.skip("sample_models not available")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if name == "shapes":
        module = build_architecture("shapes_resnet")
        spec = InputSpec("image", (3, 32, 32), class_names=["circle", "square", "triangle", "cross"])
        x = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    elif name == "cancer":
        module = build_architecture("tabular_mlp")
        spec = InputSpec("tabular", (30,), class_names=["malignant", "benign"])
        x = rng.normal(size=(n, 30)).astype(np.float32)
    else:
        module = build_architecture("text_transformer")
        spec = InputSpec("text", (16,), dtype="int64", class_names=["neg", "pos"], cls_token="<cls>")
        x = rng.integers(3, 64, size=(n, 16)).astype(np.int64)
        x[:, 0] = 2
        x[:, 12:] = 0  # padding
    module.eval()
    return LoadedModel(module=module, format="safetensors", sha256=f"standin-{name}", spec=spec, name=name), x


def test_every_method_module_registers():
    names = {m.name for m in all_methods()}
    assert "integrated_gradients" in names


@pytest.mark.parametrize("sample", SAMPLES)
def test_integrated_gradients_completeness_64_steps(sample):
    model, x = load_case(sample, n=3)
    result = get_method("integrated_gradients").explain(model, x, steps=64)
    assert result.values.shape == x.shape
    assert result.values.dtype.kind == "f"
    # Random stand-ins have tiny f(x) - f(b) next to their ReLU kinks; the trained samples do not.
    tol = 1e-3 if have_samples() else 5e-2
    assert np.all(result.completeness_error <= tol), result.completeness_error
    assert np.array_equal(result.target, model.predict_logits(x).argmax(1))
