"""A user's graph runs in the server only at batch sizes the sandbox already ran it at.

The engine and ``LoadedModel.predict_logits`` chunk a vetted model
(``max_batch_rows``) into powers of two no larger than the vetted size and pad
the remainder; `load_model` vets TorchScript and ``.pt2`` files and records
what it measured.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from explain import InputSpec, LoadedModel
from explain.loading.loader import load_model
from explain.loading.vetting import vetting_sizes
from explain.output.engine import Engine
from explain.output.methods import get_method
from explain.spec import SPEC_FILENAME

SPEC = InputSpec("tabular", (6,), class_names=["a", "b", "c"], name="vetted")


class Recorder(nn.Module):
    """A linear model that records every batch size it is run at."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6] -> [B, 3]
        self.sizes.append(int(x.shape[0]))
        return self.linear(x)


def vetted(max_rows: int) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(Recorder().eval(), "torchscript", "x", SPEC, max_batch_rows=max_rows)


def test_vetting_sizes_are_powers_of_two_or_the_fixed_size(monkeypatch):
    assert vetting_sizes(limit=64) == [1, 2, 4, 8, 16, 32, 64]
    assert vetting_sizes(limit=48) == [1, 2, 4, 8, 16, 32]
    assert vetting_sizes(fixed=5) == [5]
    monkeypatch.setenv("GLASSBOX_VETTED_BATCH", "20")
    assert vetting_sizes() == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("method, params", [
    ("integrated_gradients", {"steps": 16, "tolerance": 0.0}),
    ("saliency", {}),
    ("feature_ablation", {}),
])
def test_engine_runs_a_vetted_model_only_at_vetted_sizes(method, params):
    model = vetted(8)
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    result = get_method(method).explain(model, x, use_cache=False, precision="fp32", **params)
    assert result.values.shape == x.shape
    assert set(model.module.sizes) <= {1, 2, 4, 8}, sorted(set(model.module.sizes))
    free = LoadedModel(model.module, "safetensors", "y", SPEC)  # same weights, no cap
    want = get_method(method).explain(free, x, use_cache=False, precision="fp32", **params)
    np.testing.assert_allclose(result.values, want.values, rtol=1e-5, atol=1e-6)


def test_engine_caps_an_explicit_batch_size_and_predict_logits_pads():
    model = vetted(4)
    x = torch.randn(11, 6)
    engine = Engine("cpu", batch_size=100)
    engine.prepare(model, x.numpy())
    logits = engine.predict(model, x)
    assert max(engine.chunk_sizes) <= 4 and set(model.module.sizes) <= {1, 2, 4}
    model.module.sizes.clear()
    np.testing.assert_allclose(model.predict_logits(x), logits, rtol=1e-6, atol=1e-6)
    assert set(model.module.sizes) <= {1, 2, 4}
    assert model.padded_rows(3) == 4 and model.padded_rows(1) == 1 and model.chunk_limit(100) == 4
    with pytest.raises(ValueError):
        model.padded_rows(5)


def test_load_model_vets_torchscript_and_records_what_it_measured(monkeypatch):
    monkeypatch.setenv("GLASSBOX_VETTED_BATCH", "16")
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(6, 3))), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    model = load_model(buf.getvalue(), filename="vet.pt")
    assert model.max_batch_rows == 16
    summary = model.extra["sandbox"]
    assert summary["batch_sizes"] == [1, 2, 4, 8, 16] and summary["per_row_seconds"] >= 0
    assert summary["per_row_peak_bytes"] >= 0 and "rlimit-as" in summary["protections"]


def test_a_graph_that_fails_above_batch_one_is_capped_not_refused():
    class BatchOne(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, 6)[:, :3]  # only batch 1 works

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(BatchOne()), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    model = load_model(buf.getvalue(), filename="one.pt")
    assert model.max_batch_rows == 1 and "error at batch 2" in model.extra["sandbox"]["stopped"]
    assert model.predict_logits(np.zeros((3, 6), np.float32)).shape == (3, 3)


def test_a_graph_mixing_its_rows_runs_one_row_at_a_time_and_its_scores_are_each_rows_own():
    """A user's graph computing across its batch (``x - x.mean(0)``, attack A2): its deletion curve changed with
    the engine's chunking, unflagged. The sandbox compares a batch's first row with the row alone: such a graph is
    vetted (and run) at 1 only, said in its summary, and its curve is the same at any batch_size."""
    class Centring(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6] -> [B, 3], each row's depends on the mean
            return self.fc(x - x.mean(0, keepdim=True))

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Centring().eval()), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    model = load_model(buf.getvalue(), filename="centring.pt")
    summary = model.extra["sandbox"]
    assert model.max_batch_rows == 1 and summary["rows_mix"] is True and "one row at a time" in summary["stopped"]
    alone, batched = deletion_curves(model, np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32))
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)
    plain = load_model(_scripted_linear(), filename="plain.pt")  # a row-wise graph is not flagged
    assert plain.extra["sandbox"]["rows_mix"] is False and plain.max_batch_rows > 1


def deletion_curves(model: LoadedModel, x: np.ndarray) -> list[np.ndarray]:
    """The deletion curve of ``model``'s saliency on ``x`` with the engine's batch_size 1, then 64."""
    from explain.output.metrics import get_metric
    from explain.output.metrics.base import METRIC_CACHE

    attr = get_method("saliency").explain(model, x, absolute=False, use_cache=False)
    curves = []
    for batch_size in (1, 64):
        METRIC_CACHE.clear()
        curves.append(get_metric("deletion").evaluate(model, attr, steps=4, substrate="zero", output="logit",
                                                      random=False, batch_size=batch_size, use_cache=False).curve)
    return curves


def _scripted_linear() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(6, 3))), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    return buf.getvalue()


def test_structure_probe_batch_stays_within_the_vetted_sizes():
    from explain.structure.layers import probe_batch

    x = np.zeros((6, 6), np.float32)
    assert probe_batch(vetted(4), x, max_inputs=None).shape[0] == 4
    assert probe_batch(vetted(64), x, max_inputs=None).shape[0] == 8  # padded to the next vetted size
    assert probe_batch(LoadedModel(Recorder(), "safetensors", "z", SPEC), x, max_inputs=None).shape[0] == 6
