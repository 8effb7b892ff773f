"""Red-team checks of batch norms folded for the metrics' grids (`explain.output.fold`): the folded copy must
give the model's logits on every input the grids send, not only on the rows it was checked on."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explain.model import LoadedModel
from explain.output.fold import folded_model
from tests.test_fold import SPEC, _inputs, _kinds, _stats


class SideRead(nn.Module):
    """A convolution's output read again after its norm, by an op that is zero on ordinary rows: the copy
    checked on ordinary rows agreed, so the pair was folded and a large row's logits changed."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):  # [N, 3, 8, 8] -> [N, 3]
        y = self.conv(x)
        out = self.bn(y) + torch.relu(y - 50.0)  # y itself, beyond 50 (not on the probe's rows)
        return self.fc(out.reshape(out.shape[0], -1))


class Variants(nn.Module):
    """Pairs that fold exactly: grouped, dilated, circular padding, two convolutions sharing one weight,
    a 1-d pair; and a norm used twice, which must not fold."""

    def __init__(self):
        super().__init__()
        self.grouped, self.bn_g = nn.Conv2d(3, 6, 3, padding=2, dilation=2, groups=3), nn.BatchNorm2d(6)
        self.circular, self.bn_c = nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"), nn.BatchNorm2d(6)
        self.twin, self.bn_t = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(6)
        self.twin.weight = self.circular.weight  # one parameter, two convolutions, two norms
        self.again, self.bn_twice = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 3)

    def forward(self, x):
        x = torch.relu(self.bn_g(self.grouped(x)))
        x = torch.relu(self.bn_c(self.circular(x))) + self.bn_t(self.twin(x))
        x = self.bn_twice(self.again(x)) + self.bn_twice(x)
        return self.fc(x.reshape(x.shape[0], -1))


def _loaded(module: nn.Module) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(_stats(module), "safetensors", type(module).__name__, SPEC)


def test_a_convolution_output_read_beyond_its_norm_is_never_folded():
    model = _loaded(SideRead())
    x = _inputs(3)
    x[2] *= 400.0  # a row where relu(y - 50) is not zero; the first two (the grid's probe) are ordinary
    with torch.no_grad():
        want = model.module(x)
        got = folded_model(model, x[:2]).module(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-4 * float(want.abs().max()))


def test_grouped_dilated_padded_and_shared_weight_pairs_fold_to_the_same_logits():
    model = _loaded(Variants())
    folded = folded_model(model, _inputs(2))
    identities = sorted(n for n, k in _kinds(folded.module).items() if k == "Identity")
    assert identities == ["bn_c", "bn_g", "bn_t"]  # the norm used twice stays
    assert folded.module.twin.weight is not folded.module.circular.weight  # each folded with its own norm
    assert model.module.twin.weight is model.module.circular.weight  # the model keeps its tie
    x = _inputs(8, seed=5) * 3.0
    with torch.no_grad():
        np.testing.assert_allclose(folded.module(x).numpy(), model.module(x).numpy(), rtol=1e-5, atol=1e-5)
