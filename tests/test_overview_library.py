"""The Overview's computations live in the library (`explain.report.overview`, issue 21 "views thin"):
each answers what the library's own functions answer, and a view already computed is answered again
without computing (the same object comes back)."""
from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest

from explain.finding import sort_findings
from explain.output.layer_attribution import classify_layers, explain_layer
from explain.output.methods import get_method
from explain.report import overview
from explain.report.analysis import read_training_runs
from explain.structure.attention import attention_unavailable_reason, capture_attention
from explain.structure.layers import build_layer_table, layer_frame
from explain.training.checkpoints import epoch_from_name, read_checkpoint
from explain.training.evolution import model_at
from explain.training.findings import diagnose
from sample_models import load_sample, sample_dir, sample_inputs


def _files(sample: str) -> tuple[list[str], list[str]]:
    root = sample_dir(sample)
    return [str(root / "train_log.csv")], sorted(str(p) for p in (root / "checkpoints").glob("*.pt"))


@pytest.fixture(scope="module")
def shapes():
    return load_sample("shapes"), sample_inputs("shapes")["inputs"][2:3]


def test_layer_overview_is_layer_frame_and_the_layers_offered(shapes):
    model, x = shapes
    got = overview.layer_overview(model, x)
    assert got.frame.equals(layer_frame(build_layer_table(model, x)))
    want = classify_layers(model, x)
    assert got.choices.attributable == want.attributable and "layer3" in want.attributable
    assert overview.layer_overview(model, x) is got  # a rerun: not computed again


def test_explain_input_is_the_method_with_the_overviews_steps(shapes):
    model, x = shapes
    attr = overview.explain_input(model, x, "integrated_gradients")
    want = get_method("integrated_gradients").explain(model, x, steps=overview.OVERVIEW_STEPS, use_cache=False)
    np.testing.assert_allclose(attr.values, want.values, rtol=1e-5, atol=1e-7)
    assert attr.params["steps"] == overview.OVERVIEW_STEPS == 32
    saliency = overview.explain_input(model, x, "saliency")  # no steps to give
    np.testing.assert_allclose(saliency.values, get_method("saliency").explain(model, x, use_cache=False).values)


def test_probabilities_and_checkpoint_models(shapes):
    model, x = shapes
    np.testing.assert_array_equal(overview.probabilities(model, x), model.predict_proba(x))
    _, checkpoints = _files("shapes")
    at = overview.checkpoint_model(model, checkpoints[0])
    want = model_at(read_checkpoint(checkpoints[0]), model)
    np.testing.assert_allclose(overview.probabilities(at, x), want.predict_proba(x), rtol=1e-6)
    assert not np.allclose(overview.probabilities(at, x), model.predict_proba(x))  # other weights, other answer
    assert overview.checkpoint_model(model, checkpoints[0]) is at


def test_explain_input_layer_is_explain_layer(shapes):
    model, x = shapes
    got = overview.explain_input_layer(model, x, "layer3", "integrated_gradients", 16)
    want = explain_layer(model, x, "layer3", method="integrated_gradients", steps=16)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5, atol=1e-7)
    assert got.values[0].sum() == pytest.approx(got.output[0] - got.base_value[0], rel=1e-3)  # exact after layer3


def test_training_overview_reads_runs_and_findings_as_the_report_does():
    logs, checkpoints = _files("cancer")
    runs = overview.training_overview(logs, checkpoints)
    histories, origin = read_training_runs(logs, checkpoints)
    assert runs.origin == origin and len(runs.histories) == len(histories) == 1
    assert runs.findings == [sort_findings(diagnose(histories[0]))] and runs.findings[0]
    epoch = epoch_from_name(checkpoints[0])

    def shapes(fig) -> list:
        return json.loads(fig.to_json())["layout"].get("shapes", [])

    fig, plain = overview.training_figure(runs, epoch), overview.training_figure(runs, None)
    added = shapes(fig)[len(shapes(plain)):]  # the dotted line at the chosen checkpoint's epoch
    assert shapes(fig)[: len(shapes(plain))] == shapes(plain)
    assert added and {(s["x0"], s["line"]["dash"]) for s in added} == {(epoch, "dot")}  # one per subplot
    assert overview.training_figure(runs, epoch) is fig


def test_last_attention_draws_the_last_layers_heads_or_says_why_not():
    cancer = load_sample("cancer")
    got = overview.last_attention(cancer, sample_inputs("cancer")["inputs"][:1])
    assert got.figure is None and got.reason == attention_unavailable_reason(cancer)
    model, x = load_sample("sentiment"), sample_inputs("sentiment")["inputs"][:1]
    got = overview.last_attention(model, x)
    maps = capture_attention(model, x)
    z = np.asarray(got.figure.data[0].z, dtype=float)
    keep = [i for i, t in enumerate(x[0]) if t != 0] or list(range(x.shape[1]))
    np.testing.assert_allclose(z, maps.weights[-1, 0].mean(axis=0)[np.ix_(keep, keep)], rtol=1e-5)


def test_the_overviews_answers_keep_no_model_alive():
    """The answers are about a model, never holders of it: once the model cache (the class of the process's
    `shared_models`) evicts a model, the model, the checkpoint's model made from it and the answers about them
    are gone (they held the model objects: a model the cache had let go, and its checkpoint's copies, lived on)."""
    from explain.service.models import ModelStore
    from sample_models import sample_file

    cache = ModelStore(size=1)
    model = cache.open(sample_file("cancer").read_bytes(), filename="cancer.safetensors", name="cancer")
    x = sample_inputs("cancer")["inputs"][:1]
    _, checkpoints = _files("cancer")
    probs = overview.probabilities(model, x)
    attr = overview.explain_input(model, x, "integrated_gradients", steps=8)
    at = overview.checkpoint_model(model, checkpoints[0])
    overview.explain_input(at, x, "integrated_gradients", steps=8)
    layer = overview.layer_overview(model, x).choices.attributable[0]
    overview.explain_input_layer(model, x, layer, "integrated_gradients", 8)
    assert overview.probabilities(model, x) is probs and overview.checkpoint_model(model, checkpoints[0]) is at
    assert overview.explain_input(model, x, "integrated_gradients", steps=8) is attr  # kept while the model lives
    alive = [weakref.ref(model), weakref.ref(at)]
    del model, at
    cache.open(sample_file("sentiment").read_bytes(), filename="sentiment.safetensors")  # evicts cancer
    gc.collect()
    assert [r() for r in alive] == [None, None]
    assert all(r is None or r() is not None for r, _ in overview._MEMO.values())  # nothing kept about the dead
