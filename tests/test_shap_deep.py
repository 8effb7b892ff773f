"""shap_deep: SHAP DeepExplainer's numbers, on graphs, for every model format.

Known answers: ``shap.DeepExplainer`` itself where it works (tabular MLP, a
CNN with max pooling and many activations), additivity (sum of values =
f(x) - E[f(b)]) where it fails, and equality across eager / TorchScript /
``.pt2`` copies of one model.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import Cancelled, IncompatibleInput
from explain.loading.architectures import build_architecture
from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.output.methods.deeplift_rules import deeplift_rescale_attributions
from explain.spec import InputSpec

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
METHOD = get_method("shap_deep")
IMAGE_SPEC = InputSpec("image", (3, 16, 16), class_names=["a", "b", "c", "d"])


def _sample(name: str, fmt: str):
    """A shipped sample model, or None while the samples are not built."""
    try:
        from sample_models import load_sample, sample_dir
    except ImportError:
        return None
    files = {"safetensors": "model.safetensors", "torchscript": "model.torchscript.pt", "export": "model.pt2"}
    if not (sample_dir(name) / files[fmt]).exists():
        return None
    return load_sample(name, fmt)


def _loaded(module, spec: InputSpec, fmt: str = "safetensors", **kw) -> LoadedModel:
    return LoadedModel(module=module, format=fmt, sha256=f"test-{id(module)}", spec=spec, **kw)


def _explain(model, x, **params):
    return METHOD.explain(model, x, use_cache=False, **params)


def _shap_values(module: nn.Module, x: np.ndarray, background: np.ndarray, target: np.ndarray) -> np.ndarray:
    import shap

    sv = shap.DeepExplainer(module, torch.as_tensor(background)).shap_values(
        torch.as_tensor(x), check_additivity=False
    )  # [N, ..., K]
    return np.stack([sv[i, ..., t] for i, t in enumerate(target)])


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer():
    """The cancer MLP (sample when shipped) and 40 standardised rows of its data."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    rows = ((data - data.mean(0)) / data.std(0))[::14][:40].astype(np.float32)  # [40, 30]
    model = _sample("cancer", "safetensors")
    if model is None:
        torch.manual_seed(0)
        model = _loaded(build_architecture("tabular_mlp").eval(), InputSpec("tabular", (30,), class_names=["m", "b"]))
    return model, rows


def _resnet() -> nn.Module:
    torch.manual_seed(1)
    module = build_architecture("shapes_resnet", {"widths": [8, 16, 16]}).eval()
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):  # non-trivial eval-mode statistics
            layer.running_mean.normal_(0, 0.2)
            layer.running_var.uniform_(0.5, 1.5)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.normal_(0, 0.2)
    return module


@pytest.fixture(scope="module")
def shapes():
    """Residual CNN (in-place ReLU reused, ``+=``, BatchNorm) in three formats, and image rows."""
    eager = _sample("shapes", "safetensors")
    if eager is not None:
        from sample_models import sample_inputs

        x = sample_inputs("shapes")["inputs"][:8].astype(np.float32)
        return {fmt: _sample("shapes", fmt) for fmt in ("safetensors", "torchscript", "export")}, x
    module = _resnet()
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(2)).numpy()
    scripted = torch.jit.script(module)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (torch.as_tensor(x[:2]),), dynamic_shapes=({0: batch},))
    models = {
        "safetensors": _loaded(module, IMAGE_SPEC),
        "torchscript": _loaded(scripted, IMAGE_SPEC, "torchscript"),
        "export": _loaded(program.module(), IMAGE_SPEC, "export", exported_program=program),
    }
    return models, x


@pytest.fixture(scope="module")
def shapes_results(shapes):
    """shap_deep on the first 2 images against the other 5, per format."""
    models, x = shapes
    return {fmt: _explain(m, x[:2], background=x[2:], batch_size=16) for fmt, m in models.items()}


# --------------------------------------------------------------------------
# equal to SHAP where SHAP works
# --------------------------------------------------------------------------
def test_tabular_equals_shap_deep_explainer(cancer):
    model, rows = cancer
    x, background = rows[:8], rows[8:40]
    result = _explain(model, x, background=background)
    expected = _shap_values(model.module, x, background, result.target)
    assert result.values.shape == x.shape
    assert np.abs(result.values - expected).max() <= 1e-4
    assert result.max_completeness_error <= 1e-4
    logits = model.predict_logits(background)
    np.testing.assert_allclose(result.base_value, logits.mean(0)[result.target], atol=1e-5)
    np.testing.assert_allclose(result.output, model.predict_logits(x)[np.arange(8), result.target], atol=1e-5)
    assert result.precision == "fp32" and result.device == "cpu" and result.method == "shap_deep"


def test_maxpool_and_activation_rules_equal_shap():
    torch.manual_seed(3)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16, 8), nn.ELU(), nn.Linear(8, 8), nn.LeakyReLU(0.1),
        nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.Sigmoid(),
        nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():
        for layer in module:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.weight.mul_(3)  # every nonlinearity works outside its linear range
    x = 2 * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(4)).numpy()
    model = _loaded(module, InputSpec("image", (1, 8, 8)))
    result = _explain(model, x[:4], background=x[4:])
    expected = _shap_values(module, x[:4], x[4:], result.target)
    assert np.abs(expected).max() > 0.05
    assert np.abs(result.values - expected).max() <= 1e-4
    assert result.max_completeness_error <= 1e-4


def test_softmax_head_equals_shap():
    """A final nn.Softmax gets SHAP's elementwise rescale (additive), not its gradient."""
    torch.manual_seed(7)
    module = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1)).eval()
    x = 2 * torch.randn(12, 6, generator=torch.Generator().manual_seed(8)).numpy()
    result = _explain(_loaded(module, InputSpec("tabular", (6,))), x[:4], background=x[4:])
    expected = _shap_values(module, x[:4], x[4:], result.target)
    assert np.abs(expected).max() > 0.05
    assert np.abs(result.values - expected).max() <= 1e-4
    assert result.max_completeness_error <= 1e-4


def test_paired_deeplift_equals_captum(cancer):
    """The shared function with one baseline per input is Captum's DeepLift (rescale)."""
    from captum.attr import DeepLift

    model, rows = cancer
    x, base = rows[:6], np.zeros_like(rows[:6])
    target = model.predict_logits(x).argmax(1)
    ours = deeplift_rescale_attributions(model, x, base, target, grid=False)
    theirs = DeepLift(model.module).attribute(torch.as_tensor(x), torch.as_tensor(base), target=torch.as_tensor(target))
    assert np.abs(ours.values - theirs.detach().numpy()).max() <= 1e-4
    np.testing.assert_allclose(ours.values.sum(1), ours.output - ours.base_value, atol=1e-4)


# --------------------------------------------------------------------------
# where SHAP 0.51 fails
# --------------------------------------------------------------------------
def test_shap_fails_on_inplace_reused_relu(shapes):
    """If this starts passing, SHAP fixed in-place / reused activations."""
    import shap

    models, x = shapes
    module = copy.deepcopy(models["safetensors"].module)  # shap leaves its hooks behind when it raises
    with pytest.raises(RuntimeError, match="inplace"):
        shap.DeepExplainer(module, torch.as_tensor(x[2:4])).shap_values(torch.as_tensor(x[:1]))


def test_resnet_additive_and_not_plain_gradient(shapes, shapes_results):
    models, x = shapes
    result = shapes_results["safetensors"]
    assert result.values.shape == (2, *x.shape[1:])
    assert result.max_completeness_error <= 1e-3
    # gradient x (x - b) averaged over the background: what rules keyed on module types would give
    module = models["safetensors"].module
    n_bg = len(x) - 2  # the background is x[2:]
    xx = torch.as_tensor(x[:2]).repeat_interleave(n_bg, 0).requires_grad_(True)
    bb = torch.as_tensor(x[2:]).repeat(2, 1, 1, 1)
    logits = module(xx).gather(1, torch.as_tensor(result.target).repeat_interleave(n_bg)[:, None]).sum()
    (grad,) = torch.autograd.grad(logits, xx)
    plain = (grad * (xx - bb)).reshape(2, n_bg, *x.shape[1:]).mean(1).detach().numpy()
    gap = np.linalg.norm(result.values - plain) / np.linalg.norm(result.values)
    assert gap > 0.05


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_torchscript_and_pt2_equal_eager(shapes_results, fmt):
    eager, other = shapes_results["safetensors"], shapes_results[fmt]
    assert np.abs(other.values - eager.values).max() <= 1e-4
    assert other.max_completeness_error <= 1e-3
    np.testing.assert_array_equal(other.target, eager.target)


def test_static_batch_program(cancer):
    """A .pt2 exported for batch 1 runs pair by pair and gives the same numbers."""
    model, rows = cancer
    program = torch.export.export(model.module, (torch.as_tensor(rows[:1]),))
    static = _loaded(program.module(), model.spec, "export", exported_program=program, fixed_batch_size=1)
    got = _explain(static, rows[:3], background=rows[10:14])
    want = _explain(model, rows[:3], background=rows[10:14])
    assert any("static batch of 1" in n for n in got.notes)
    assert np.abs(got.values - want.values).max() <= 1e-5


def test_text_attributed_at_embedding_all_formats():
    torch.manual_seed(5)
    module = build_architecture("text_transformer", {"dropout": 0.0}).eval()
    spec = InputSpec("text", (16,), dtype="int64", class_names=["neg", "pos"])
    ids = torch.randint(2, 64, (6, 16), generator=torch.Generator().manual_seed(6))
    ids[:, 0], ids[:3, 10:] = 2, 0  # <cls> first, some padding
    x = ids.numpy()
    eager = _explain(_loaded(module, spec), x[:2], background=x[2:])
    assert eager.values.shape == (2, 16)
    assert eager.max_completeness_error <= 1e-3  # exact rules for attention and layer norm
    assert not any("no exact" in n for n in eager.notes)
    scripted = _loaded(torch.jit.script(module), spec, "torchscript")
    via_script = _explain(scripted, x[:2], background=x[2:])
    assert np.abs(via_script.values - eager.values).max() <= 1e-4
    # the default text background is padding with the first token kept: finite numbers
    padded = _explain(_loaded(module, spec), x[:1])
    assert padded.params["background_description"].startswith("padding") and np.isfinite(padded.values).all()


# --------------------------------------------------------------------------
# batching, progress, cancellation, the model left alone
# --------------------------------------------------------------------------
def test_batch_size_invariance_and_progress(cancer):
    model, rows = cancer
    calls: list[tuple[int, int]] = []
    small = METHOD.explain(model, rows[:5], progress=lambda d, t: calls.append((d, t)), use_cache=False,
                           background=rows[10:30], batch_size=7)
    large = _explain(model, rows[:5], background=rows[10:30], batch_size=4096)
    assert np.abs(small.values - large.values).max() <= 1e-5
    assert calls[-1] == (100, 100) and len(calls) == 15
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def _fingerprint(module: nn.Module):
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
        for m in module.modules()
    ]
    state = {k: v.clone() for k, v in module.state_dict().items()}
    attrs = [sorted(vars(m)) for m in module.modules()]
    return hooks, state, attrs, module.training


def _assert_same(before, after):
    assert before[0] == after[0] and before[2] == after[2] and before[3] == after[3]
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def test_cancel_propagates_and_model_untouched(shapes):
    models, x = shapes
    module = models["safetensors"].module
    before, out_before = _fingerprint(module), module(torch.as_tensor(x[:2]))  # [2, K]

    def cancel(done, total):
        raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        METHOD.explain(models["safetensors"], x[:2], progress=cancel, use_cache=False, background=x[2:], batch_size=2)
    _assert_same(before, _fingerprint(module))
    assert torch.equal(out_before, module(torch.as_tensor(x[:2])))


class _Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.act = nn.ReLU(inplace=True)
        self.fail = True

    def forward(self, x):
        if self.fail:
            raise ValueError("broken model")
        return self.fc(self.act(x))


def test_model_untouched_when_forward_raises_and_in_train_mode():
    module = _Raises()
    user_hook = module.fc.register_forward_hook(lambda *a: None)
    spec = InputSpec("tabular", (4,))
    before = _fingerprint(module)
    with pytest.raises(IncompatibleInput, match="raised ValueError"):
        _explain(_loaded(module, spec), np.ones((2, 4), np.float32), background_kind="zeros")
    _assert_same(before, _fingerprint(module))
    module.fail = False
    module.train()  # a module left in training mode is explained in eval mode and left in training mode
    ok = _explain(_loaded(module, spec), np.ones((2, 4), np.float32), background_kind="zeros")
    assert module.training and ok.max_completeness_error <= 1e-5
    assert len(module.fc._forward_hooks) == 1
    user_hook.remove()
