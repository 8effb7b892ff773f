"""Attack A2 (stop 31) on the channels-last fast paths: a one-channel image model whose forward refuses a
channels-last feature map (``.view``) failed its first deletion / insertion (since the rows were built
channels-last, 035aa59) and its first integrated gradients with torch's 'view size is not compatible'. The
refusal's retry ran ``batch.contiguous()``, which keeps a one-channel channels-last batch as it is (it counts as
contiguous), so the convolution's output stayed channels-last and the retry failed the same way."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.output.metrics import get_metric
from explain.output.metrics.base import METRIC_CACHE
from explain.output.metrics.common import ranks
from explain.output.metrics.faithfulness.deletion import curve_fractions
from explain.spec import InputSpec

C, H, W = 1, 5, 7  # one channel, odd sizes


class _Viewing(nn.Module):
    """A conv net that flattens its feature map by ``.view`` (refuses channels-last)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, 2, 3, padding=1)
        self.fc = nn.Linear(2 * H * W, 3)

    def forward(self, x):  # [N, 1, 5, 7] -> [N, 3]
        f = self.conv(x)  # [N, 2, 5, 7]
        return self.fc(f.view(f.shape[0], -1))


def _fresh() -> tuple[LoadedModel, nn.Module]:
    """A new module each time: a refusal is remembered per module."""
    torch.manual_seed(0)
    module = _Viewing().eval()
    spec = InputSpec("image", (C, H, W), class_names=["a", "b", "c"])
    return LoadedModel(module, "state_dict", f"viewing-{id(module)}", spec, name="viewing"), module


X = np.random.default_rng(0).random((2, C, H, W)).astype(np.float32)


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_a_one_channel_model_that_refuses_channels_last_gets_its_curve_by_hand(name):
    model, module = _fresh()
    attr = get_method("saliency").explain(model, X, use_cache=False)
    METRIC_CACHE.clear()
    r = get_metric(name).evaluate(_fresh()[0], attr, steps=5, substrate="zero", output="logit", random=False)
    order = ranks(attr.values.sum(axis=1)).reshape(2, 1, H, W)  # [N, 1, H, W]
    deleted = name == "deletion"
    rows = np.stack([np.where(order < k, 0.0 if deleted else X, X if deleted else 0.0)
                     for k in curve_fractions(H * W, 5)], axis=1).astype(np.float32)  # [N, 6, 1, H, W]
    with torch.no_grad():
        logits = module(torch.as_tensor(rows.reshape(-1, C, H, W))).numpy().reshape(2, 6, 3)
    want = np.take_along_axis(logits, attr.target[:, None, None], axis=2)[..., 0]
    np.testing.assert_allclose(r.curve, want, rtol=0, atol=1e-5)


def test_a_one_channel_model_that_refuses_channels_last_gets_integrated_gradients():
    model, _ = _fresh()
    got = get_method("integrated_gradients").explain(model, X, steps=8, use_cache=False)
    twin, _ = _fresh()  # the same weights, run in NCHW from the start
    twin_module = twin.module
    from explain.output import model_function

    model_function._REFUSED.add(twin_module)
    want = get_method("integrated_gradients").explain(twin, X, steps=8, use_cache=False)
    np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-6)
