"""The batching engine: equal to Captum, invariant to batching, OOM back-off,
fixed batch sizes, progress and cancellation, precision, tolerance, cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import load_case
from torch import nn

from explain import InputSpec, LoadedModel
from explain.errors import Cancelled, IncompatibleInput
from explain.output.cache import ATTRIBUTION_CACHE, AttributionCache, make_key
from explain.output.engine import Engine, add_rows, pad_rows
from explain.output.methods import get_method
from explain.output.model_function import Layout, ModelFunction
from explain.output.precision import choose_precision

IG = get_method("integrated_gradients")


def ig(model, x, **kw):
    kw.setdefault("precision", "fp32")
    kw.setdefault("tolerance", 0.0)  # fixed steps: these tests compare the engine's arithmetic
    return IG.explain(model, x, use_cache=False, **kw)


def captum_ig(model, x, targets, steps, baselines=None):
    from captum.attr import IntegratedGradients

    xt = torch.as_tensor(x)
    b = torch.zeros_like(xt) if baselines is None else torch.as_tensor(baselines)
    return IntegratedGradients(model.module).attribute(
        xt, baselines=b, target=torch.as_tensor(targets), n_steps=steps
    ).detach().numpy()


@pytest.mark.parametrize("sample", ["cancer", "shapes"])
def test_integrated_gradients_equal_captum(sample):
    model, x = load_case(sample, n=2)
    result = ig(model, x, steps=16)
    want = captum_ig(model, x, result.target, 16)
    scale = np.abs(want).max()
    np.testing.assert_allclose(result.values, want, atol=1e-5 * scale, rtol=0)


def test_text_integrated_gradients_equal_captum_layer_ig():
    from captum.attr import LayerIntegratedGradients

    model, x = load_case("sentiment", n=2)
    result = ig(model, x, steps=8)
    layer = model.module.embedding  # pad row is zero: pad-id baseline == zero embedding
    assert torch.all(layer.weight[0] == 0)
    lig = LayerIntegratedGradients(model.module, layer)
    want = lig.attribute(torch.as_tensor(x), baselines=torch.zeros_like(torch.as_tensor(x)),
                         target=torch.as_tensor(result.target), n_steps=8).sum(-1).detach().numpy()
    np.testing.assert_allclose(result.values, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert result.values.shape == x.shape


@pytest.mark.parametrize("sample", ["cancer", "sentiment"])
def test_batched_equals_unbatched(sample):
    model, x = load_case(sample, n=3)
    whole = ig(model, x, steps=8, batch_size=10_000)
    tiny = ig(model, x, steps=8, batch_size=3)
    np.testing.assert_allclose(tiny.values, whole.values, atol=1e-5 * np.abs(whole.values).max(), rtol=0)


class _OOMAbove(nn.Module):
    """Raises CUDA out-of-memory for batches above ``limit`` rows."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.batches = inner, limit, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_without_changing_the_result():
    model, x = load_case("cancer", n=3)
    want = ig(model, x, steps=8)
    wrapped = _OOMAbove(model.module, limit=5)
    oom_model = LoadedModel(module=wrapped, format="safetensors", sha256="oom", spec=model.spec)
    got = ig(oom_model, x, steps=8, batch_size=24)
    np.testing.assert_allclose(got.values, want.values, atol=1e-6, rtol=0)
    assert any("out of memory" in n for n in got.notes)
    assert max(b for b in wrapped.batches[-5:]) <= 5


class _FixedBatch(nn.Module):
    def __init__(self, inner: nn.Module, size: int):
        super().__init__()
        self.inner, self.size = inner, size

    def forward(self, x):
        if x.shape[0] != self.size:
            raise RuntimeError(f"static batch {self.size}, got {x.shape[0]}")
        return self.inner(x)


def test_fixed_batch_size_pads_the_last_chunk():
    model, x = load_case("cancer", n=3)
    want = ig(model, x, steps=5)
    fixed = LoadedModel(module=_FixedBatch(model.module, 4), format="export", sha256="fixed",
                        spec=model.spec, fixed_batch_size=4)
    got = ig(fixed, x, steps=5)  # 15 rows -> chunks of 4, the last padded
    np.testing.assert_allclose(got.values, want.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.output, want.output, atol=1e-6)


@pytest.mark.parametrize("owner", [[0, 0, 0, 2, 2, 2, 1, 1, 1], [1, 1, 3, 3, 3, 0, 0, 0, 0], [2, 0, 2, 1, 0, 1, 2, 0, 1]],
                         ids=["equal runs", "unequal runs", "interleaved"])
@pytest.mark.parametrize("weighted", [False, True])
def test_add_rows_sums_each_owners_weighted_rows(owner, weighted):
    """Whole paths (runs of one length, one batched product), part paths and scattered rows: each
    owner gets the sum of its (weighted) rows, in a channels-last chunk too."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(9, 2, 3, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    weights = torch.randn(9, generator=gen) if weighted else None
    owner = torch.tensor(owner)
    acc = torch.randn(4, 2, 3, 4, generator=gen)
    want = acc.clone().double()
    for r in range(9):
        want[owner[r]] += rows[r].double() * (1.0 if weights is None else float(weights[r]))
    add_rows(acc, owner, rows, weights)
    torch.testing.assert_close(acc.double(), want, rtol=1e-6, atol=1e-6)


def test_pad_rows_repeats_the_last_row():
    a, b = pad_rows(4, torch.arange(2.0), torch.tensor([7, 8]))
    assert a.tolist() == [0.0, 1.0, 1.0, 1.0] and b.tolist() == [7, 8, 8, 8]


def test_progress_reaches_total_and_cancel_removes_hooks():
    model, x = load_case("sentiment", n=2)
    calls = []
    ig(model, x, steps=8, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (16, 16) and [d for d, _ in calls] == sorted(d for d, _ in calls)

    def cancel(done, total):
        raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        ig(model, x, steps=8, batch_size=4, progress=cancel)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())


def test_model_function_refuses_text_without_reachable_embedding():
    spec = InputSpec("text", (4,), dtype="int64", class_names=["a", "b"])
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 2)))
    model = LoadedModel(module=scripted, format="torchscript", sha256="ts", spec=spec)
    with pytest.raises(IncompatibleInput, match="feature_ablation"):
        ModelFunction(model, torch.zeros(1, 4, dtype=torch.long))
    assert "feature_ablation" in IG.incompatibility(model)


def test_choose_precision_auto_falls_back_when_error_is_large():
    exact = torch.ones(10)
    good = lambda p: exact if p == "fp32" else exact * 1.001  # noqa: E731
    bad = lambda p: exact if p == "fp32" else exact * 1.5  # noqa: E731
    cuda = torch.device("cuda")
    assert choose_precision("auto", cuda, good)[0] == "bf16"
    precision, notes = choose_precision("auto", cuda, bad)
    assert precision == "fp32" and "fell back to fp32" in notes[0]
    assert choose_precision("auto", torch.device("cpu"), bad) == ("fp32", [])
    assert choose_precision("tf32", torch.device("cpu"), bad)[0] == "fp32"


def test_bf16_runs_on_cpu_and_is_recorded():
    model, x = load_case("cancer", n=2)
    exact = ig(model, x, steps=8)
    low = ig(model, x, steps=8, precision="bf16")
    assert low.precision == "bf16" and exact.precision == "fp32"
    assert not np.allclose(low.values, exact.values, atol=0, rtol=1e-7)  # autocast really ran
    np.testing.assert_allclose(low.values, exact.values, atol=0.05 * np.abs(exact.values).max())


def test_tolerance_raises_steps_until_met():
    model, x = load_case("cancer", n=3)
    coarse = ig(model, x, steps=4)
    tol = float(np.min(coarse.completeness_error)) / 2
    refined = ig(model, x, steps=4, tolerance=tol)
    assert refined.params["steps"] == 4 and max(refined.params["per_input"]["steps"]) > 4  # asked; each used
    assert any("raised steps" in n or "need more than" in n for n in refined.notes)
    met = refined.completeness_error <= tol
    assert met.any() and (met.all() or any("need more than" in n for n in refined.notes))


def test_cache_hits_for_the_same_request_only():
    model, x = load_case("cancer", n=2)
    ATTRIBUTION_CACHE.clear()
    first = IG.explain(model, x, steps=4)
    hits = ATTRIBUTION_CACHE.hits
    again = IG.explain(model, x, steps=4)
    assert ATTRIBUTION_CACHE.hits == hits + 1 and "from the attribution cache" in again.notes
    np.testing.assert_array_equal(again.values, first.values)
    again.values[:] = 0  # a caller's change does not reach the cache
    assert np.abs(IG.explain(model, x, steps=4).values).sum() > 0
    IG.explain(model, x, steps=4, target=1)
    IG.explain(model, x, steps=6)
    assert ATTRIBUTION_CACHE.hits == hits + 2


def test_cache_misses_when_igs_step_budget_changes(monkeypatch):
    """GLASSBOX_IG_STEP_BUDGET / _SECONDS decide how far the tolerance raises an input's steps: a map
    computed under one budget is not the answer under another."""
    model, x = load_case("cancer", n=2)
    ATTRIBUTION_CACHE.clear()
    tol = float(np.min(IG.explain(model, x, steps=4).completeness_error)) / 2
    monkeypatch.setenv("GLASSBOX_IG_STEP_BUDGET", "1")  # no raising at all
    capped = IG.explain(model, x, steps=4, tolerance=tol)
    assert max(capped.params.get("per_input", {}).get("steps", [4])) == 4
    hits = ATTRIBUTION_CACHE.hits
    monkeypatch.setenv("GLASSBOX_IG_STEP_BUDGET", "4")
    raised = IG.explain(model, x, steps=4, tolerance=tol)
    assert ATTRIBUTION_CACHE.hits == hits and max(raised.params["per_input"]["steps"]) > 4  # a miss, computed
    monkeypatch.setenv("GLASSBOX_IG_STEP_SECONDS", "30")
    IG.explain(model, x, steps=4, tolerance=tol)
    assert ATTRIBUTION_CACHE.hits == hits  # another time budget: a miss too
    again = IG.explain(model, x, steps=4, tolerance=tol)
    assert ATTRIBUTION_CACHE.hits == hits + 1 and "from the attribution cache" in again.notes


def test_cache_is_bounded_lru():
    model, x = load_case("cancer", n=2)
    cache = AttributionCache(max_entries=2)
    result = ig(model, x, steps=2)
    keys = [make_key(model, x, "m", {"steps": s}, None) for s in range(3)]
    for k in keys:
        cache.put(k, result)
    assert len(cache) == 2 and cache.get(keys[0]) is None and cache.get(keys[2]) is not None


def test_engine_cpu_default_batch_is_bounded():
    engine = Engine("cpu")
    sizes = []
    engine.map_chunks(5000, lambda a, b: sizes.append(b - a), row_bytes=3 * 224 * 224 * 4)
    assert sum(sizes) == 5000 and 1 <= max(sizes) <= 64


def test_quadrature_is_captums_and_each_call_gets_its_own_tensors():
    from captum.attr._utils.approximation_methods import approximation_parameters

    from explain.output.methods.integrated_gradients import quadrature

    weights_fn, alphas_fn = approximation_parameters("gausslegendre")
    alphas, weights = quadrature(16)
    assert alphas.tolist() == list(alphas_fn(16)) and weights.tolist() == list(weights_fn(16))
    alphas.zero_()  # a caller's tensors are its own: the cached nodes stay
    assert quadrature(16)[0].tolist() == list(alphas_fn(16))


def test_given_targets_ig_takes_f_x_and_f_baseline_from_one_pass_before_its_gradients():
    """No separate f(x) pass: f(x) and f(baseline) come from one forward pass over both, before the
    gradient pass, and a target out of range is refused by it in one line, class names or not."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    model = LoadedModel(module=module, format="state_dict", sha256="fused-passes", spec=InputSpec("tabular", (4,)))
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    targets = np.array([0, 1, 2, 0, 1])
    passes: list[tuple[int, bool]] = []  # (rows, with gradients) per forward pass
    handle = module.register_forward_hook(lambda _m, inp, _o: passes.append((inp[0].shape[0], inp[0].requires_grad)))
    try:
        attr = ig(model, x, steps=8, target=targets)
        first = list(passes)
        passes.clear()
        with pytest.raises(IncompatibleInput, match="out of range: the model has 3 classes"):
            ig(model, x, steps=8, target=3)
    finally:
        handle.remove()
    assert first == [(10, False), (40, True)]  # 5 inputs + 5 baselines, then 5 x 8 path points
    assert passes == [(10, False)]  # refused before any gradient
    with torch.no_grad():
        want = module(torch.as_tensor(x)).numpy()[np.arange(5), targets]
        base = module(torch.zeros(5, 4)).numpy()[np.arange(5), targets]
    np.testing.assert_allclose(attr.output, want, rtol=1e-6)
    np.testing.assert_allclose(attr.base_value, base, rtol=1e-6)
    np.testing.assert_allclose(attr.values, captum_ig(model, x, targets, 8), rtol=1e-5, atol=1e-6)


def test_forward_only_chunks_hold_2_mib_of_inputs_a_thread_on_a_cpu():
    """Forward-only grids (metrics, baselines, occlusion) are sized for the caches: 2 MiB of inputs
    a thread (42 rows of 3 x 64 x 64 floats at 1 thread, a quarter of a gradient chunk's rows; 85 at 2)."""
    engine = Engine("cpu")
    row = 3 * 64 * 64 * 4
    threads = torch.get_num_threads()
    try:
        for n, rows in ((1, 42), (2, 85)):
            torch.set_num_threads(n)
            sizes: list[int] = []
            engine.map_chunks(500, lambda a, b, sizes=sizes: sizes.append(b - a), row_bytes=engine.forward_row_bytes(row))
            assert max(sizes) == n * (2 << 20) // row == rows and sum(sizes) == 500
    finally:
        torch.set_num_threads(threads)
    grads = []
    engine.map_chunks(500, lambda a, b: grads.append(b - a), row_bytes=row)
    assert max(grads) == 170


def test_exported_text_model_attributes_at_the_embedding_node():
    model, x = load_case("sentiment", n=2)
    ids = torch.as_tensor(x)
    program = torch.export.export(model.module, (ids,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    exported = LoadedModel(module=program.module(), format="export", sha256="pt2", spec=model.spec,
                           exported_program=program)
    assert IG.is_compatible(exported)
    want = ig(model, x, steps=6)
    got = ig(exported, x, steps=6)
    np.testing.assert_allclose(got.values, want.values, atol=1e-4 * np.abs(want.values).max(), rtol=0)
    np.testing.assert_allclose(got.base_value, want.base_value, atol=1e-4)


def test_torchscript_image_model_gets_input_gradients():
    model, x = load_case("cancer", n=2)
    scripted = LoadedModel(module=torch.jit.script(model.module), format="torchscript", sha256="ts",
                           spec=model.spec)
    np.testing.assert_allclose(ig(scripted, x, steps=6).values, ig(model, x, steps=6).values, atol=1e-6)
    assert not get_method("grad_cam").is_compatible(scripted)


def test_empty_inputs_are_refused():
    model, x = load_case("cancer", n=2)
    with pytest.raises(IncompatibleInput, match="no inputs"):
        ig(model, x[:0], steps=4)


def test_baselines_blur_mean_file_and_kmeans_background():
    from explain.errors import UsageError
    from explain.output.baselines import background_set, blur_images, make_baseline

    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    flat = np.full((1, 3, 16, 16), 0.7, dtype=np.float32)
    np.testing.assert_allclose(blur_images(flat, 2.0), flat, atol=1e-6)  # constant stays constant
    blurred = make_baseline("blurred", img, "image")
    assert blurred.shape == img.shape and blurred.std() < 0.5 * img.std()
    tab = rng.normal(size=(5, 4)).astype(np.float32)
    bg = rng.normal(loc=3.0, size=(50, 4)).astype(np.float32)
    np.testing.assert_allclose(make_baseline("mean", tab, "tabular", background=bg)[0], bg.mean(0), rtol=1e-5)
    np.testing.assert_allclose(make_baseline("file", tab, "tabular", reference=np.ones(4))[3], np.ones(4))
    with pytest.raises(UsageError):
        make_baseline("file", tab, "tabular")
    with pytest.raises(IncompatibleInput):
        make_baseline("blurred", tab, "tabular")
    centres, weights = background_set(bg, tab, "tabular", size=8)
    assert centres.shape == (8, 4) and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights @ centres, bg.mean(0), atol=1e-4)  # k-means keeps the mean
    rows, w = background_set(None, tab, "tabular", size=8, fallback="zero")
    assert rows.shape == (1, 4) and not rows.any() and w.tolist() == [1.0]


class _ViewsItsFeatures(nn.Module):
    """A LeNet-style CNN that flattens with ``.view``: a channels-last feature map refuses it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)
        self.calls: list[bool] = []  # channels-last batch per forward

    def forward(self, x):
        self.calls.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_a_cnn_that_refuses_channels_last_runs_as_it_is_from_then_on():
    torch.manual_seed(0)
    module = _ViewsItsFeatures().eval()
    spec = InputSpec(modality="image", input_shape=(3, 8, 8), class_names=["a", "b"])
    model = LoadedModel(module=module, format="safetensors", sha256="views", spec=spec)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    want = captum_ig(model, x, [0, 1, 0], steps=8)
    assert Layout.for_model(model).channels_last  # a CPU conv net: asked channels-last first
    got = ig(model, x, steps=8, target=[0, 1, 0])
    np.testing.assert_allclose(got.values, want, atol=1e-5, rtol=0)  # the fallback's answer is the model's
    assert not Layout.for_model(model).channels_last  # remembered for the module
    module.calls.clear()
    ig(model, x, steps=8, target=[0, 1, 0])
    assert module.calls and not any(module.calls)  # no failed channels-last pass any more
