"""Quality metrics (explain.output.metrics): known answers.

Quantus (deterministic metrics, its default settings) and Captum (infidelity,
sensitivity_max, on the same perturbations) are the references; a linear model gives
exact answers; the trained shapes sample gives the behaviour the metrics exist for.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_methods import load_case
from torch import nn

from explain.errors import IncompatibleInput, UsageError
from explain.model import LoadedModel
from explain.output.cache import ATTRIBUTION_CACHE
from explain.output.methods import get_method
from explain.output.metrics import all_metrics, get_metric
from explain.output.metrics.base import METRIC_CACHE
from explain.output.metrics.faithfulness import infidelity as infidelity_mod
from explain.output.metrics.quality import quality_findings, quality_json
from explain.output.metrics.robustness import max_sensitivity as sensitivity_mod
from explain.spec import InputSpec

ALL = ("deletion", "insertion", "comprehensiveness", "sufficiency", "faithfulness_correlation", "infidelity", "max_sensitivity", "randomization",
       "pointing_game", "relevance_mass", "sparseness", "complexity")


@functools.cache
def shapes_all():
    """(model, inputs [32, 3, 32, 32], masks [32, 32, 32]) of the shapes sample."""
    import sample_models

    data = sample_models.sample_inputs("shapes")
    model, _ = load_case("shapes")
    return model, np.asarray(data["inputs"]), np.asarray(data["masks"])


@functools.cache
def shapes_maps(method: str, n: int = 32):
    model, x, _ = shapes_all()
    params = {"steps": 16} if method == "integrated_gradients" else {}
    return get_method(method).explain(model, x[:n], use_cache=False, **params)


def evaluate(name, model, attr, **kw):
    METRIC_CACHE.clear()
    return get_metric(name).evaluate(model, attr, **kw)


def linear_model(seed: int = 0) -> LoadedModel:
    gen = torch.Generator().manual_seed(seed)
    module = nn.Linear(6, 3)
    with torch.no_grad():
        module.weight.copy_(torch.randn(3, 6, generator=gen))
        module.bias.copy_(torch.randn(3, generator=gen))
    spec = InputSpec("tabular", (6,), class_names=["a", "b", "c"], feature_names=[f"f{i}" for i in range(6)])
    return LoadedModel(module.eval(), "state_dict", f"linear{seed}", spec, name="linear")


def linear_inputs(n: int = 10) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32)


def test_registry_has_every_metric_of_the_issue_in_its_category():
    assert [m.name for m in all_metrics()] == list(ALL)
    cats = {m.name: m.category for m in all_metrics()}
    assert cats["deletion"] == cats["infidelity"] == "faithfulness"
    assert cats["randomization"] == "randomisation" and cats["pointing_game"] == "localisation"
    for m in all_metrics():
        assert m.title and m.summary
        for spec in m.params.values():
            assert spec.coerce("x", spec.default) == spec.default


# -- Quantus equality (its default settings) ----------------------------------------
@pytest.mark.parametrize("method", ["saliency", "grad_cam", "integrated_gradients"])
def test_deterministic_metrics_equal_quantus_defaults(method):
    quantus = pytest.importorskip("quantus")
    model, x, masks = shapes_all()
    attr = shapes_maps(method)
    a = attr.values.sum(axis=1, keepdims=True)  # [N, 1, H, W]: the map the page shows
    s = masks[:, None].astype(float)  # [N, 1, H, W]
    for name, ref in [("sparseness", quantus.Sparseness(disable_warnings=True)),
                      ("complexity", quantus.Complexity(disable_warnings=True)),
                      ("pointing_game", quantus.PointingGame(disable_warnings=True)),
                      ("relevance_mass", quantus.RelevanceMassAccuracy(disable_warnings=True))]:
        # Quantus normalises by the batch's maximum; ours is per input: compare input by input
        want = np.concatenate([ref(model=None, x_batch=x[i:i + 1], y_batch=attr.target[i:i + 1],
                                   a_batch=a[i:i + 1].copy(), s_batch=s[i:i + 1], channel_first=True)
                               for i in range(len(x))])
        got = evaluate(name, model, attr, masks=masks).per_input
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=name)
        if name in ("sparseness", "complexity"):  # and on the whole batch as Quantus runs it
            batch = np.asarray(ref(model=None, x_batch=x, y_batch=attr.target, a_batch=a.copy(), s_batch=s,
                                   channel_first=True))
            np.testing.assert_allclose(got, batch, atol=1e-5, rtol=0, err_msg=name)


def test_complexity_and_sparseness_known_extremes():
    model = linear_model()
    x = linear_inputs(2)
    attr = get_method("saliency").explain(model, x, use_cache=False)
    attr.values = np.array([[0, 0, 5.0, 0, 0, 0], [1, 1, 1, 1, 1, 1.0]])
    np.testing.assert_allclose(evaluate("complexity", model, attr).per_input, [0, np.log(6)], atol=1e-6)
    sparse = evaluate("sparseness", model, attr).per_input
    assert sparse[0] == pytest.approx(5 / 6, abs=1e-5) and sparse[1] == pytest.approx(0, abs=1e-6)


# -- Captum equality (same perturbations) ----------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_equals_captum_on_the_same_perturbations(normalize):
    from captum.metrics import infidelity

    model, x = load_case("cancer", n=6)
    attr = get_method("integrated_gradients").explain(model, x, steps=16, use_cache=False)
    samples, noise = 7, 0.2
    got = evaluate("infidelity", model, attr, samples=samples, noise=noise, normalize=normalize, seed=3)
    pert = torch.as_tensor(infidelity_mod.perturbations(x, samples, noise, 3))  # [N, S, F]

    def perturb(inputs):  # Captum repeats each input S times, input-major
        p = pert.reshape(-1, *x.shape[1:])
        return p, inputs - p

    want = infidelity(model.module, perturb, torch.as_tensor(x), torch.as_tensor(attr.values).float(),
                      target=torch.as_tensor(attr.target), n_perturb_samples=samples, normalize=normalize)
    np.testing.assert_allclose(got.per_input, want.double().numpy(), rtol=1e-4, atol=1e-6)


def test_max_sensitivity_equals_captum_on_the_same_perturbations():
    from captum.metrics import sensitivity_max

    model, x = load_case("cancer", n=5)
    method = get_method("saliency")
    attr = method.explain(model, x, absolute=False, use_cache=False)
    got = evaluate("max_sensitivity", model, attr, samples=3, radius=0.05, seed=2)
    noise = torch.as_tensor(sensitivity_mod.perturbations(x, 3, 0.05, 2)).reshape(-1, *x.shape[1:])

    def perturb(inputs, perturb_radius):  # Captum passes tuples of tensors
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return inputs + noise

    def explanation(inputs, target):  # a tuple of tensors in, a tuple out (Captum's convention)
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():  # Captum calls it under no_grad
            values = method.explain(model, batch.numpy(), target=target.numpy(), absolute=False,
                                    use_cache=False).values
        return (torch.as_tensor(values),) if isinstance(inputs, tuple) else torch.as_tensor(values)

    want = sensitivity_max(explanation, (torch.as_tensor(x),), perturb_func=perturb, perturb_radius=0.05,
                           n_perturb_samples=3, target=torch.as_tensor(attr.target))
    np.testing.assert_allclose(got.per_input, want.double().numpy(), rtol=1e-5, atol=1e-7)


# -- linear model: exact answers ---------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
def test_signed_gradient_of_a_linear_model_has_zero_infidelity(normalize):
    model = linear_model()
    attr = get_method("saliency").explain(model, linear_inputs(), absolute=False, use_cache=False)
    for noise in (0.01, 1.0, 10.0):
        r = evaluate("infidelity", model, attr, noise=noise, samples=5, normalize=normalize)
        np.testing.assert_allclose(r.per_input, 0.0, atol=1e-6 * noise**2)
        assert np.all(r.random_baseline > 1e-3 * noise**2)  # the permuted gradient does not fit


def test_input_x_gradient_of_a_linear_model_has_faithfulness_correlation_one():
    model = linear_model()
    attr = get_method("input_x_gradient").explain(model, linear_inputs(), use_cache=False)
    r = evaluate("faithfulness_correlation", model, attr, substrate="zero", subset=0.5, runs=20)
    np.testing.assert_allclose(r.per_input, 1.0, atol=1e-6)
    assert np.all(r.random_baseline < 0.999)


def test_deletion_curve_of_a_linear_model_by_hand():
    """Logit after removing the k largest attributions (zero substrate) = f(x) minus their sum."""
    model = linear_model()
    x = linear_inputs(3)
    attr = get_method("input_x_gradient").explain(model, x, use_cache=False)
    r = evaluate("deletion", model, attr, steps=6, substrate="zero", output="logit")
    order = np.argsort(-attr.values, axis=1, kind="stable")
    removed = np.take_along_axis(attr.values, order, axis=1).cumsum(axis=1)  # [N, 6]
    want = np.concatenate([attr.output[:, None], attr.output[:, None] - removed], axis=1)
    np.testing.assert_allclose(r.curve, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.curve_x, np.arange(7) / 6)
    np.testing.assert_allclose(r.per_input, np.trapezoid(want, r.curve_x, axis=1), rtol=1e-6)
    alone = evaluate("deletion", model, attr, steps=6, substrate="zero", output="logit", random=False)
    np.testing.assert_allclose(alone.per_input, r.per_input, rtol=1e-6)  # the same curve, no chance level
    assert alone.random_baseline is None and alone.random_curve is None and alone.margin is None



@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_the_random_curve_by_hand_shares_the_curves_ends_and_their_rows(name):
    """The random attribution's curve (its own order, the same ends) equals the linear model's logits by
    hand, and the ends (start and end rows, the same for every map) are scored once: 2 x steps rows an input."""
    from explain.output.metrics.common import random_like

    model = linear_model()
    x = linear_inputs(3)
    attr = get_method("input_x_gradient").explain(model, x, use_cache=False)
    seen = []
    with model.module.register_forward_hook(lambda _m, inp, _o: seen.append(len(inp[0]))):
        r = evaluate(name, model, attr, steps=6, substrate="zero", output="logit")
    assert sum(seen) == 3 * 2 * 6
    order = np.argsort(np.argsort(-random_like(attr.values, x), axis=1, kind="stable"), axis=1)  # [N, 6] ranks
    images = np.stack([np.where(order < k, x if name == "insertion" else 0.0, 0.0 if name == "insertion" else x)
                       for k in range(7)], axis=1)  # [N, 7, 6]
    with torch.no_grad():
        logits = model.module(torch.as_tensor(images, dtype=torch.float32)).numpy()  # [N, 7, 3]
    want = np.take_along_axis(logits, attr.target[:, None, None], axis=2)[..., 0]
    np.testing.assert_allclose(r.random_curve, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(r.random_curve[:, [0, -1]], r.curve[:, [0, -1]])

# -- shapes sample: the behaviour the metrics are for -------------------------------------
@pytest.mark.parametrize("method", ["integrated_gradients", "grad_cam"])
def test_ig_and_grad_cam_beat_random_on_deletion_and_insertion(method):
    model, _, _ = shapes_all()
    attr = shapes_maps(method)
    for name in ("deletion", "insertion"):
        r = evaluate(name, model, attr)
        assert r.beats_random().mean() >= 0.9, (name, r.beats_random().mean())
        assert r.margin > 0


def test_the_signed_gradient_beats_random_on_infidelity_on_shapes():
    model, x, _ = shapes_all()
    attr = get_method("saliency").explain(model, x[:8], absolute=False, use_cache=False)
    r = evaluate("infidelity", model, attr)  # defaults: 50 Gaussian perturbations of std 0.1
    assert r.beats_random().all() and r.margin > 0


def edge_detector(model, inputs, targets):
    """A "map" from the input alone (Sobel magnitude), whatever the model."""
    x = np.asarray(inputs, dtype=np.float64)
    return np.hypot(ndimage.sobel(x, axis=2), ndimage.sobel(x, axis=3))


def test_randomisation_curve_of_ig_falls_and_an_edge_detector_is_flagged():
    model, x, _ = shapes_all()
    x = x[:8]
    ig = get_method("integrated_gradients").explain(model, x, steps=8, tolerance=0, use_cache=False)
    before = [p.detach().clone() for p in model.module.parameters()]
    r = evaluate("randomization", model, ig)
    assert all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))  # a copy was randomised
    assert r.curve_labels == ["original", "head", "layer3", "layer2", "layer1", "bn1", "conv1"]
    mean_curve = np.nanmean(r.curve, axis=0)
    assert mean_curve[0] == 1.0 and mean_curve[3] < 0.5 and mean_curve[-1] < 0.5, mean_curve
    assert not quality_findings({"integrated_gradients": {"randomization": r}})

    edges = get_method("saliency").explain(model, x, use_cache=False)
    edges.values, edges.method = edge_detector(model, x, None), "edge_detector"
    e = get_metric("randomization").evaluate(model, edges, explain=edge_detector)
    np.testing.assert_allclose(e.curve, 1.0)
    found = quality_findings({"edge_detector": {"randomization": e}})
    assert len(found) == 1 and found[0].kind == "randomisation_check"
    assert "edge_detector fails the randomisation check" in found[0].message
    assert quality_json({"edge_detector": {"randomization": e}})["methods"]["edge_detector"]["randomization"][
        "curve"] == [1.0] * 7


def test_randomisation_refuses_a_graph_without_parameters():
    model, x = load_case("shapes", fmt="torchscript")
    attr = get_method("saliency").explain(model, x[:2], use_cache=False)
    with pytest.raises(IncompatibleInput, match="needs the model's parameters"):
        get_metric("randomization").evaluate(model, attr)


# -- engine, cache, input checks ----------------------------------------------------------
@pytest.mark.parametrize("name", ["deletion", "insertion", "faithfulness_correlation", "infidelity"])
def test_batched_equals_unbatched(name):
    model, _, _ = shapes_all()
    attr = shapes_maps("grad_cam", 3)
    small = {"faithfulness_correlation": {"runs": 5}, "infidelity": {"samples": 3}}.get(name, {"steps": 3})
    whole = evaluate(name, model, attr, **small)
    one = evaluate(name, model, attr, batch_size=1, **small)
    three = evaluate(name, model, attr, batch_size=3, **small)
    for other in (one, three):
        np.testing.assert_allclose(other.per_input, whole.per_input, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.random_baseline, whole.random_baseline, rtol=1e-5, atol=1e-6)


class _ConvViews(nn.Module):
    """A small CNN that flattens with ``.view``: a channels-last batch makes it raise."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):  # [N, 3, 6, 6] -> [N, 3]
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_deletion_and_insertion_curves_of_a_cnn_by_hand():
    """Every step's image built by hand (the k top pixels swapped, all channels) and scored by the
    model: the rows are built per (input, map) run of steps, across chunk edges (5 rows a chunk),
    in the channels-last layout the engine asks first, and a CNN that refuses it still gets them."""
    from explain.output.model_function import Layout

    torch.manual_seed(0)
    spec = InputSpec("image", (3, 6, 6), class_names=["a", "b", "c"])
    module = _ConvViews().eval()
    x = np.random.default_rng(2).normal(size=(3, 3, 6, 6)).astype(np.float32)
    copy = LoadedModel(_ConvViews().eval(), "safetensors", "conv-views-copy", spec)
    copy.module.load_state_dict(module.state_dict())
    attr = get_method("saliency").explain(copy, x, use_cache=False)  # the copy learns the layout is refused
    model = LoadedModel(module, "safetensors", "conv-views", spec)
    assert Layout.for_model(model).channels_last
    pixel_rank = np.argsort(np.argsort(-attr.values.sum(1).reshape(3, -1), axis=1, kind="stable"), axis=1)
    counts = np.round(np.linspace(0, 36, 5)).astype(int)
    for name, insert in (("deletion", False), ("insertion", True)):
        r = evaluate(name, model, attr, steps=4, substrate="zero", output="logit", random=False, batch_size=5)
        images = np.stack([np.where((pixel_rank[i] < c).reshape(1, 6, 6), x[i] if insert else 0.0,
                                    0.0 if insert else x[i]) for i in range(3) for c in counts])  # [15, 3, 6, 6]
        with torch.no_grad():
            logits = model.module(torch.as_tensor(images, dtype=torch.float32)).numpy().reshape(3, 5, 3)
        want = np.take_along_axis(logits, attr.target[:, None, None], axis=2)[..., 0]  # [3, 5]
        np.testing.assert_allclose(r.curve, want, rtol=1e-5, atol=1e-5)
    assert not Layout.for_model(model).channels_last  # it refused the layout, and answered all the same


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float32, True), (torch.float32, False),
                                                       (torch.float64, True), (torch.float16, True)])
def test_perturbed_rows_hold_the_start_or_the_end_bit_for_bit_in_the_models_layout(dtype, channels_last):
    """Deletion / insertion rows (`deletion._RowLayout`): each value is the start's or the end's bit for bit
    (-0.0, NaN payloads, infinities, subnormals; 4- and 8-byte values selected on their bits, others by
    torch.where), a pixel's channels alike, in the layout the model runs: channels-last for a CNN that takes it."""
    from types import SimpleNamespace

    from explain.output.metrics.faithfulness.deletion import _RowLayout
    from explain.output.model_function import Layout

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 4, 5, generator=gen).to(dtype)
    end = torch.randn(2, 3, 4, 5, generator=gen).to(dtype)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}[dtype]
    start.view(bits)[0, 0, 0, :4] = torch.tensor([-1, 0x7FC01234 if dtype == torch.float32 else -2, 1, 5], dtype=bits)
    start[0, 1, 0, :3] = torch.tensor([-0.0, float("inf"), -float("inf")], dtype=dtype)  # NaNs, a subnormal above
    grid = SimpleNamespace(model=SimpleNamespace(modality="image"), fn=SimpleNamespace(layout=Layout(channels_last)))
    rows_as = _RowLayout(grid, start, end)
    order = torch.randperm(20, generator=gen)  # [P]: each pixel's rank
    counts = torch.tensor([0, 7, 20, 3])  # [steps]
    out, values = rows_as.empty(6)
    rows_as.fill(values[1:5], 1, order, counts)
    switched = (order.view(4, 5)[None] < counts[:, None, None])[:, None]  # [steps, 1, H, W]
    want = torch.where(switched, end[1], start[1])  # [steps, C, H, W]
    assert torch.equal(out[1:5].view(bits), want.view(bits))
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    rows_as.fill(values[:1], 0, order, torch.tensor([20]))
    rows_as.fill(values[5:], 0, order, torch.tensor([0]))
    assert torch.equal(out[0].view(bits), end[0].view(bits)) and torch.equal(out[5].view(bits), start[0].view(bits))


def test_an_input_gets_the_same_random_baseline_in_any_batch():
    model, _, _ = shapes_all()
    attr = shapes_maps("grad_cam", 6)
    part = get_method("grad_cam").explain(model, attr.inputs[2:4], use_cache=False)
    whole = evaluate("deletion", model, attr, steps=5)
    alone = evaluate("deletion", model, part, steps=5)
    np.testing.assert_allclose(alone.random_baseline, whole.random_baseline[2:4], rtol=1e-5)


def test_results_are_cached_like_attributions():
    model, _, masks = shapes_all()
    attr = shapes_maps("grad_cam", 6)
    METRIC_CACHE.clear()
    first = get_metric("deletion").evaluate(model, attr, steps=5)
    again = get_metric("deletion").evaluate(model, attr, steps=5)
    assert "from the metric cache" in again.notes and "from the metric cache" not in first.notes
    np.testing.assert_array_equal(again.per_input, first.per_input)
    other = get_metric("deletion").evaluate(model, attr, steps=6)
    assert "from the metric cache" not in other.notes
    changed = get_method("grad_cam").explain(model, attr.inputs, use_cache=False)
    changed.values = changed.values[::-1].copy()  # other values, same method and params
    assert "from the metric cache" not in get_metric("deletion").evaluate(model, changed, steps=5).notes


def test_localisation_needs_masks_that_fit():
    model, _, masks = shapes_all()
    attr = shapes_maps("grad_cam", 6)
    with pytest.raises(UsageError, match="needs ground-truth masks"):
        get_metric("pointing_game").evaluate(model, attr)
    with pytest.raises(IncompatibleInput, match="one mask per input"):
        get_metric("pointing_game").evaluate(model, attr, masks=masks[:5])
    empty = masks[:6].copy()
    empty[0] = False
    r = get_metric("relevance_mass").evaluate(model, attr, masks=empty)
    assert np.isnan(r.per_input[0]) and np.isfinite(r.per_input[1:]).all()
    assert quality_json({"grad_cam": {"relevance_mass": r}})["methods"]["grad_cam"]["relevance_mass"][
        "per_input"][0] is None


def test_text_deletion_replaces_tokens_with_padding():
    model, x = load_case("sentiment", n=4)
    ATTRIBUTION_CACHE.clear()
    attr = get_method("integrated_gradients").explain(model, x, steps=8)
    r = evaluate("deletion", model, attr, steps=4, output="logit")
    assert r.curve.shape == (4, 5)
    np.testing.assert_allclose(r.curve[:, 0], attr.output, rtol=1e-4, atol=1e-4)
    assert not get_metric("infidelity").is_compatible(model)


# -- report and command line ---------------------------------------------------------------
def test_report_has_a_quality_section_with_the_page_numbers():
    from explain.report.sections import build_report

    model, x, masks = shapes_all()
    report = build_report(model, x[:4], methods=["grad_cam"], max_inputs=4, masks=masks[:4],
                          quality=["deletion", "pointing_game", "sparseness"])
    section = next(s for s in report.sections if s.title == "Quality")
    assert section.error is None, section.error
    got = section.data["methods"]["grad_cam"]
    attr = get_method("grad_cam").explain(model, x[:4])
    want = evaluate("deletion", model, attr).per_input
    np.testing.assert_allclose(got["deletion"]["per_input"], want, rtol=1e-5)
    assert got["deletion"]["random_baseline"] is not None and got["pointing_game"]["random_baseline"] is None
    assert len(section.figures) == 1  # the deletion curve
    assert report.params["quality_metrics"] == ["deletion", "pointing_game", "sparseness"]
    assert "Quality" in report.to_html()


def test_cli_evaluate_prints_and_writes_the_issue_shape(tmp_path, capsys, monkeypatch):
    import json

    from explain.cli import evaluate as evaluate_cli
    from explain.cli import main

    model, x, masks = shapes_all()
    monkeypatch.setattr(evaluate_cli, "load_model_arg", lambda path, spec=None, inputs=None: model)
    np.save(tmp_path / "x.npy", x[:3])
    np.savez(tmp_path / "m.npz", masks=masks[:3])
    out = tmp_path / "q.json"
    code = main(["evaluate", "shapes", "--inputs", str(tmp_path / "x.npy"), "--methods", "grad_cam,saliency",
                 "--metrics", "deletion,pointing_game,randomization", "--masks", str(tmp_path / "m.npz"),
                 "--param", "deletion.steps=4", "--param", "randomization.steps=2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert printed == json.loads(out.read_text())
    assert set(printed) == {"methods"} and set(printed["methods"]) == {"grad_cam", "saliency"}
    deletion = printed["methods"]["grad_cam"]["deletion"]
    assert set(deletion) == {"per_input", "mean", "random_baseline"} and len(deletion["per_input"]) == 3
    assert deletion["mean"] == pytest.approx(np.mean(deletion["per_input"]))
    assert printed["methods"]["saliency"]["pointing_game"]["random_baseline"] is None
    sanity = printed["methods"]["saliency"]["randomization"]
    assert len(sanity["per_input"]) == 3 and len(sanity["curve"]) == 3  # original + 2 randomised blocks
    assert sanity["curve"][-1] == pytest.approx(np.mean(sanity["per_input"]))
    assert sanity["curve"][0] == 1.0 and sanity["layers"] == ["original", "head", "layer3"]


@pytest.mark.parametrize("argv, code, words", [
    (["--metrics", "nope"], 2, "Unknown metric 'nope'"),
    (["--methods", "nope"], 2, "Unknown method 'nope'"),
    (["--metrics", "pointing_game"], 2, "needs ground-truth masks"),
    (["--metrics", "pointing_game", "--masks", "BADMASK"], 3, "Cannot read the masks"),
    (["--param", "deletion.steps=1"], 2, "must be at least 2"),
    (["--param", "oops"], 2, "NAME.PARAM=VALUE"),
])
def test_cli_evaluate_refuses_in_one_line(tmp_path, capsys, monkeypatch, argv, code, words):
    from explain.cli import evaluate as evaluate_cli
    from explain.cli import main

    model, x = load_case("cancer", n=3)
    monkeypatch.setattr(evaluate_cli, "load_model_arg", lambda path, spec=None, inputs=None: model)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    argv = [str(tmp_path / "bad.npy") if a == "BADMASK" else a for a in argv]
    base = {"--methods": "saliency", "--metrics": "deletion"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    params = [a for k, v in base.items() for a in ((k, v) if k != "--param" else ("--param", v))]
    got = main(["evaluate", "cancer", "--inputs", str(tmp_path / "x.npy"), *params, "--out", str(tmp_path / "q.json")])
    err = capsys.readouterr().err
    assert got == code and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.json").exists()


def test_cli_report_takes_quality_metrics_and_masks(tmp_path, capsys):
    import json

    from explain.cli import main

    _, x, masks = shapes_all()
    np.save(tmp_path / "x.npy", x[:2])
    np.save(tmp_path / "m.npy", masks[:2])
    common = ["report", "shapes", "--inputs", str(tmp_path / "x.npy"), "--methods", "grad_cam", "--max-inputs", "2"]
    code = main([*common, "--metrics", "pointing_game,sparseness", "--masks", str(tmp_path / "m.npy"),
                 "--out", str(tmp_path / "r.html")])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and "Quality" in payload["sections"] and not payload["failed"]
    from explain.report.document import read_report_data

    data = read_report_data((tmp_path / "r.html").read_text())
    quality = next(s for s in data["sections"].values() if "metrics" in s)
    assert quality["metrics"] == ["pointing_game", "sparseness"]
    want = evaluate("pointing_game", shapes_all()[0], get_method("grad_cam").explain(shapes_all()[0], x[:2]),
                    masks=masks[:2]).per_input
    assert quality["methods"]["grad_cam"]["pointing_game"]["per_input"] == want.tolist()
    code = main([*common, "--metrics", "none", "--out", str(tmp_path / "r2.html")])
    assert code == 0 and "Quality" not in json.loads(capsys.readouterr().out)["sections"]
    assert main([*common, "--metrics", "nope", "--out", str(tmp_path / "r3.html")]) == 2
