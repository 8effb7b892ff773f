"""Infidelity's perturbations and dot products: the same numbers as their first definition
(``rng.normal`` draws, ``np.einsum`` products), computed faster (issue 21)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.output.metrics import get_metric
from explain.output.metrics.base import METRIC_CACHE
from explain.output.metrics.common import input_seed, random_like
from explain.output.metrics.faithfulness import infidelity as infidelity_mod
from explain.spec import InputSpec


def test_perturbations_are_the_normal_draws_bit_for_bit():
    x = np.random.default_rng(1).normal(size=(3, 2, 4, 4)).astype(np.float32)
    for noise in (0.1, 0.37, 2.5):
        got = infidelity_mod.perturbations(x, 5, noise, seed=4)  # [3, 5, 2, 4, 4]
        assert got.dtype == np.float32 and got.shape == (3, 5, 2, 4, 4)
        for i in range(3):
            want = np.random.default_rng(input_seed(x[i], 4)).normal(0.0, noise, size=(5, 2, 4, 4))
            assert np.array_equal(got[i], want.astype(np.float32))


@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_and_its_chance_level_are_the_einsum_formula(normalize):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)).eval()
    model = LoadedModel(module=module, format="safetensors", sha256="draws", spec=InputSpec("image", (2, 4, 4)),
                        device=torch.device("cpu"), name="draws")
    x = np.random.default_rng(2).normal(size=(3, 2, 4, 4)).astype(np.float32)
    attr = get_method("saliency").explain(model, x, use_cache=False)
    METRIC_CACHE.clear()
    got = get_metric("infidelity").evaluate(model, attr, samples=6, noise=0.3, normalize=normalize, seed=5,
                                            use_cache=False)
    pert = infidelity_mod.perturbations(x, 6, 0.3, 5)  # [3, 6, 2, 4, 4]
    with torch.no_grad():
        logits = module(torch.as_tensor(x)).double().numpy()  # [3, 4]
        moved = module(torch.as_tensor(x[:, None] - pert).reshape(-1, 2, 4, 4)).double().numpy().reshape(3, 6, 4)
    t = attr.target
    drops = logits[np.arange(3), t][:, None] - moved[np.arange(3), :, t]  # [3, 6]
    flat = pert.reshape(3, 6, -1).astype(np.float64)
    dots = np.einsum("nsp,np->ns", flat, np.asarray(attr.values, dtype=np.float64).reshape(3, -1))
    chance = np.einsum("nsp,np->ns", flat, random_like(attr.values, x, 5).reshape(3, -1))
    np.testing.assert_allclose(got.per_input, infidelity_mod.infidelity_from(dots, drops, normalize), rtol=1e-5)
    np.testing.assert_allclose(got.random_baseline, infidelity_mod.infidelity_from(chance, drops, normalize),
                               rtol=1e-5)
