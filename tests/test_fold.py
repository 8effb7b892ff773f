"""Batch norms folded into their convolutions for forward-only passes (explain.output.fold):
the same logits up to rounding, the model itself untouched, and nothing folded where the
pair is not certain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from explain.model import LoadedModel
from explain.output.fold import folded_model
from explain.output.methods import get_method
from explain.output.metrics import get_metric
from explain.output.metrics.common import Grid
from explain.spec import InputSpec

SPEC = InputSpec("image", (3, 8, 8), class_names=["a", "b", "c"])


def _stats(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval-mode statistics and affine parameters in every batch norm."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return module.eval()


class Net(nn.Module):
    """A Sequential pair, attribute pairs in a residual block (a conv with a bias, a ReLU module
    used twice), a batch norm before its convolution, and a head; ``kind`` adds a pair that must
    not be folded: ``read_twice`` (the convolution's output also added after the norm) or
    ``in_place`` (the output changed in place before the norm)."""

    def __init__(self, kind: str = "plain"):
        super().__init__()
        self.kind = kind
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.pre, self.conv2 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)  # norm, then convolution
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):  # [N, 3, 8, 8] -> [N, 3]
        x = self.stem(x)
        x = self.relu(self.bn1(self.conv1(x)) + x)
        x = self.relu(self.conv2(self.pre(x)))
        y = self.conv3(x)
        if self.kind == "in_place":
            y.mul_(2.0)
        out = self.bn3(y)
        if self.kind == "read_twice":
            out = out + y
        return self.fc(out.reshape(out.shape[0], -1))


def _model(kind: str = "plain") -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(_stats(Net(kind)), "safetensors", f"fold-{kind}", SPEC)


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, 3, 8, 8)), dtype=torch.float32)


def _kinds(module: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in module.named_modules() if name}


def test_folded_copy_gives_the_same_logits_and_leaves_the_model_as_it_was():
    model = _model()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    kinds = _kinds(model.module)
    folded = folded_model(model, _inputs(1))
    assert folded is not model
    got = _kinds(folded.module)
    # the three conv -> norm pairs are one convolution each; the norm before its convolution stays
    assert [n for n, k in got.items() if k == "Identity"] == ["stem.1", "bn1", "bn3"]
    assert got["pre"] == "BatchNorm2d"
    assert folded.module.conv2.weight is model.module.conv2.weight  # unfolded parameters are shared
    x = _inputs(16, seed=3)  # not the probe
    with torch.no_grad():
        np.testing.assert_allclose(folded.module(x).numpy(), model.module(x).numpy(), rtol=1e-5, atol=1e-5)
    assert _kinds(model.module) == kinds
    assert all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.module.modules())


def test_a_pair_changed_in_place_between_is_left_and_an_output_read_twice_folds_nothing():
    in_place = folded_model(_model("in_place"), _inputs(1))
    assert [n for n, k in _kinds(in_place.module).items() if k == "Identity"] == ["stem.1", "bn1"]
    x = _inputs(4, seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(in_place.module(x).numpy(), _model("in_place").module(x).numpy(),
                                   rtol=1e-5, atol=1e-5)
    read_twice = _model("read_twice")  # conv3's output read after its norm too: seen (`fold._Reads`), left
    folded = folded_model(read_twice, _inputs(1))
    assert [n for n, k in _kinds(folded.module).items() if k == "Identity"] == ["stem.1", "bn1"]
    with torch.no_grad():
        np.testing.assert_allclose(folded.module(x).numpy(), read_twice.module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_the_copy_is_kept_while_the_model_stays_as_it_was():
    model = _model()
    first = folded_model(model, _inputs(1))
    assert folded_model(model, _inputs(2)).module is first.module
    with torch.no_grad():
        model.module.bn1.running_mean.add_(1.0)  # in place: the kept copy is stale
    again = folded_model(model, _inputs(1))
    assert again.module is not first.module
    x = _inputs(4, seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(again.module(x).numpy(), model.module(x).numpy(), rtol=1e-5, atol=1e-5)
        assert not np.allclose(first.module(x).numpy(), model.module(x).numpy(), atol=1e-3)


@pytest.mark.parametrize("why", ["training", "hooked", "graph"])
def test_nothing_is_folded_in_training_mode_under_hooks_or_in_a_graph(why):
    model = _model()
    if why == "training":
        model.module.train()
    elif why == "hooked":
        for m in model.module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_hook(lambda *_: None)
    else:
        model.format = "torchscript"  # a user's graph: not ours to change
    assert folded_model(model, _inputs(1)) is model


def test_deletion_on_a_folded_model_equals_its_rows_scored_by_the_model():
    """Every step's image built by hand and scored by the model itself (batch norms unfolded):
    the metric, which scores them on the folded copy, gives the same curve."""
    model = _model()
    x = _inputs(3).numpy()
    assert Grid(model, x, np.zeros(3, dtype=np.int64), "cpu").fn.model.module is not model.module
    attr = get_method("saliency").explain(model, x, use_cache=False)
    r = get_metric("deletion").evaluate(model, attr, steps=4, substrate="zero", output="logit", random=False,
                                        use_cache=False)
    rank = np.argsort(np.argsort(-attr.values.sum(1).reshape(3, -1), axis=1, kind="stable"), axis=1)
    counts = np.round(np.linspace(0, 64, 5)).astype(int)
    images = np.stack([np.where((rank[i] < c).reshape(1, 8, 8), 0.0, x[i]) for i in range(3) for c in counts])
    with torch.no_grad():
        logits = model.module(torch.as_tensor(images, dtype=torch.float32)).numpy().reshape(3, 5, 3)
    want = np.take_along_axis(logits, attr.target[:, None, None], axis=2)[..., 0]  # [3, 5]
    np.testing.assert_allclose(r.curve, want, rtol=1e-5, atol=1e-5)


class Caching(nn.Module):
    """A conv -> BN model that makes a tensor on its first forward pass and keeps it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):  # [N, 3, 8, 8] -> [N, 3]
        if "scale" not in self._buffers:
            self.register_buffer("scale", torch.full((4, 1, 1), 2.0))
        out = self.bn(self.conv(x)) * self.scale
        return self.fc(out.reshape(out.shape[0], -1))


def test_what_a_folded_copy_makes_stays_in_it_and_the_model_still_differentiates():
    """The grid runs the folded copy in inference mode: a tensor the forward pass keeps lands in
    the copy, so the model's own gradient pass later keeps none of its inference tensors."""
    torch.manual_seed(0)
    model = LoadedModel(_stats(Caching()), "safetensors", "fold-caching", SPEC)
    x = _inputs(2).numpy()
    attr = get_method("saliency").explain(LoadedModel(_stats(Caching()), "safetensors", "other", SPEC), x,
                                          use_cache=False)
    get_metric("insertion").evaluate(model, attr, steps=2, random=False, use_cache=False)
    assert "scale" not in model.module._buffers
    values = get_method("saliency").explain(model, x, use_cache=False).values  # would raise on an inference tensor
    assert np.isfinite(values).all() and not model.module.scale.is_inference()


class _Ops(TorchDispatchMode):
    """The aten / mkldnn ops run inside the block."""

    def __enter__(self):
        self.seen = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_copys_convolutions_run_on_reordered_weights_with_the_models_values_and_layout():
    """Each 2-d convolution of the copy keeps its weight in oneDNN's layout (`fold._PackedConv2d`):
    without gradients it gives the unpacked convolution's values in the batch's own memory layout;
    with gradients on it runs as the model's does, so a gradient still reaches the input."""
    from explain.output.fold import _PackedConv2d

    model = _model()
    folded = folded_model(model, _inputs(1)).module
    convs = {n: m for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    assert set(convs) == {"stem.0", "conv1", "conv2", "conv3"}
    assert all(type(m) is _PackedConv2d for m in convs.values())
    conv = convs["conv1"]
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=layout)
        with torch.inference_mode(), _Ops() as ops:
            got = conv(x)
        want = nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        # the reordered weight serves channels-last batches (the engine's layout); a contiguous one as it is
        assert ("_convolution_pointwise" in str(ops.seen)) == (layout == torch.channels_last)
        assert got.is_contiguous(memory_format=layout) and want.is_contiguous(memory_format=layout)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    x = _inputs(2).requires_grad_(True)
    (grad,) = torch.autograd.grad(folded(x)[:, 0].sum(), x)
    (want,) = torch.autograd.grad(model.module(x)[:, 0].sum(), x)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5)
