"""``deeplift`` equals Captum's ``DeepLift`` on Captum's own test models, in every format.

The models are those of ``captum.testing.helpers.basic_models`` that take one
tensor shaped as a Glassbox spec allows (tabular [F], image [C, H, W]):
max pooling, softmax heads, in-place ReLU, padding/dilation. Each runs as the
eager module, a traced TorchScript and a ``torch.export`` program; Captum
runs on the eager module.

Where one hooked nonlinearity's output is directly the next one's input
(``BasicModel_ConvNet``: ReLU -> MaxPool), Captum's tensor hooks hand the
ReLU the max pool's *plain* gradient instead of its DeepLift multiplier
(the ReLU's output-gradient hook runs before the pool's input hook on the
same tensor), so Captum's values there do not add up to f(x) - f(r).
Glassbox does not copy that: the test shows its values add up and Captum's
do not, and checks the max-pool and softmax-head rules on the same layers
without the chaining.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.output.methods.deeplift_rules import deeplift_rescale_attributions
from explain.spec import InputSpec

captum_models = pytest.importorskip("captum.testing.helpers.basic_models")
warnings.filterwarnings("ignore", category=UserWarning)


def _convnet_random_head():
    """BasicModel_ConvNet with random head weights (its ones-weights make every class alike)."""
    module = captum_models.BasicModel_ConvNet()
    with torch.no_grad():
        module.fc1.weight.normal_(0, 1)
        module.fc2.weight.normal_(0, 1)
    return module


class _ConvPoolSoftmax(torch.nn.Module):
    """BasicModel_ConvNet's layers with a linear op between each ReLU and its pool (no hook chaining)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = torch.nn.Conv2d(1, 2, 3, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = torch.nn.Conv2d(2, 4, 3, 1), torch.nn.Tanh(), torch.nn.MaxPool2d(2)
        self.fc1, self.relu3, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 10)
        self.softmax = torch.nn.Softmax(dim=1)

    def forward(self, x):  # [N, 1, 10, 10] -> [N, 10]
        x = self.pool1(2 * self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)) - 1)
        return self.softmax(self.fc2(self.relu3(self.fc1(x.view(-1, 4)))))


#: name -> (builder, one sample's shape)
MODELS = {
    "BasicLinearModel2": (lambda: captum_models.BasicLinearModel2(5, 3), (5,)),
    "BasicLinearModel_Multilayer": (lambda: captum_models.BasicLinearModel_Multilayer(5, 4, 3), (5,)),
    "BasicLinearReLULinear": (lambda: captum_models.BasicLinearReLULinear(5, bias=True), (5,)),
    "BasicModel_MultiLayer": (lambda: captum_models.BasicModel_MultiLayer(), (3,)),
    "BasicModel_MultiLayer_inplace": (lambda: captum_models.BasicModel_MultiLayer(inplace=True), (3,)),
    "SimpleLRPModel": (lambda: captum_models.SimpleLRPModel(inplace=False), (3,)),
    "LinearMaxPoolLinearModel": (lambda: captum_models.LinearMaxPoolLinearModel(), (4,)),
    "BasicModel_ConvNetWithPaddingDilation": (lambda: captum_models.BasicModel_ConvNetWithPaddingDilation(), (1, 6, 6)),
    "BasicModel_ConvNetWithPaddingDilation_inplace": (
        lambda: captum_models.BasicModel_ConvNetWithPaddingDilation(inplace=True), (1, 6, 6)),
    "ConvNet_layers_unchained": (_ConvPoolSoftmax, (1, 10, 10)),
}
FORMATS = ("eager", "torchscript", "pt2")


def _spec(shape: tuple[int, ...]) -> InputSpec:
    return InputSpec("tabular" if len(shape) == 1 else "image", shape)


def _as(fmt: str, module: torch.nn.Module, shape: tuple[int, ...], example: torch.Tensor) -> LoadedModel:
    spec = _spec(shape)
    if fmt == "eager":
        return LoadedModel(module=module, format="safetensors", sha256=f"captum-{id(module)}", spec=spec)
    if fmt == "torchscript":
        return LoadedModel(module=torch.jit.trace(module, example), format="torchscript", sha256=f"ts-{id(module)}", spec=spec)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    return LoadedModel(module=program.module(), format="export", sha256=f"ep-{id(module)}", spec=spec,
                       exported_program=program)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_deeplift_equals_captum(name, fmt):
    from captum.attr import DeepLift

    build, shape = MODELS[name]
    torch.manual_seed(0)
    module = build().eval()
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(6, *shape, generator=gen)
    base = torch.randn(6, *shape, generator=gen) * 0.5
    with torch.no_grad():
        k = module(x).reshape(6, -1).shape[1]
    target = torch.arange(6) % k
    want = DeepLift(module).attribute(x, base, target=target).detach().numpy()
    model = _as(fmt, module, shape, x[:2])
    got = deeplift_rescale_attributions(model, x.numpy(), base.numpy(), target.numpy(), grid=False, flavour="captum")
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got.values - want).max() <= 1e-4 * scale, (name, fmt, np.abs(got.values - want).max())
    assert np.abs(want).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("fmt", FORMATS)
def test_chained_relu_maxpool_adds_up_where_captum_does_not(fmt):
    """BasicModel_ConvNet (random head, softmax removed so both rules could be exact)."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    module = _convnet_random_head().eval()
    module.softmax = torch.nn.Identity()
    gen = torch.Generator().manual_seed(1)
    x, base = 2 * torch.randn(6, 1, 10, 10, generator=gen), 0.5 * torch.randn(6, 1, 10, 10, generator=gen)
    target = torch.arange(6)
    with torch.no_grad():
        delta = (module(x) - module(base)).gather(1, target[:, None]).squeeze(1).numpy()
    theirs = DeepLift(module).attribute(x, base, target=target).detach().numpy().reshape(6, -1).sum(1)
    ours = deeplift_rescale_attributions(_as(fmt, module, (1, 10, 10), x[:2]), x.numpy(), base.numpy(),
                                         target.numpy(), grid=False, flavour="captum")
    np.testing.assert_allclose(ours.values.reshape(6, -1).sum(1), delta, atol=1e-5)
    assert np.abs(theirs - delta).max() > 0.05


def test_method_with_zero_baseline_equals_captum():
    """The ``deeplift`` method itself (zero baseline) on the max-pool / softmax ConvNet."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    module = _ConvPoolSoftmax().eval()
    x = 2 * torch.randn(4, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    model = _as("pt2", module, (1, 10, 10), x[:2])
    result = get_method("deeplift").explain(model, x.numpy(), use_cache=False, baseline="zero", target=3)
    want = DeepLift(module).attribute(x, torch.zeros_like(x), target=3).detach().numpy()
    assert np.abs(result.values - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


class _ConvView(torch.nn.Module):
    """Conv -> ReLU -> max pool -> ``view`` (refused by a channels-last feature map) -> linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.Linear(36, 3)

    def forward(self, x):  # [N, 2, 6, 6] -> [N, 3]
        h = self.pool(torch.relu(self.conv(x)))  # [N, 4, 3, 3]
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("fmt", ("eager", "pt2"))
def test_pairs_run_channels_last_with_the_values_of_nchw(fmt, monkeypatch):
    """A CPU conv graph's pairs run channels-last (faster convolutions); the graph's ``view`` of
    a feature map, which that layout refuses, runs as a reshape; the values are those of NCHW."""
    from explain.output.methods import deeplift_rules

    torch.manual_seed(0)
    module = _ConvView().eval()
    gen = torch.Generator().manual_seed(3)
    x, bg = torch.randn(3, 2, 6, 6, generator=gen), torch.randn(4, 2, 6, 6, generator=gen)
    h = torch.relu(module.conv(x[:1].contiguous(memory_format=torch.channels_last)))
    with pytest.raises(RuntimeError):
        module.pool(h).view(1, -1)  # the layout the test is about
    model = _as(fmt, module, (2, 6, 6), x[:2])
    used = []
    monkeypatch.setattr(deeplift_rules, "_channels_last",
                        lambda *a, real=deeplift_rules._channels_last: used.append(real(*a)) or used[-1])
    fast = deeplift_rescale_attributions(model, x.numpy(), bg.numpy(), np.array([0, 1, 2]), flavour="captum")
    monkeypatch.setattr(deeplift_rules, "_channels_last", lambda *a: False)
    plain = deeplift_rescale_attributions(model, x.numpy(), bg.numpy(), np.array([0, 1, 2]), flavour="captum")
    assert used == [True]
    np.testing.assert_allclose(fast.values, plain.values, rtol=1e-5, atol=1e-6 * np.abs(plain.values).max())
    np.testing.assert_allclose(fast.values.reshape(3, -1).sum(1), fast.output - fast.base_value, atol=1e-5)
