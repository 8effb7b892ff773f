"""Layer table, module graph, activation/weight statistics and layer importance: numbers with known answers."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import IncompatibleInput, UsageError
from explain.model import LoadedModel
from explain.output.layer_importance import (
    compute_grad_cam,
    compute_layer_importance,
    grad_cam_layers,
)
from explain.spec import InputSpec
from explain.structure.activations import compute_weight_histogram, compute_weight_stats, tabulate_activations
from explain.structure.layers import build_layer_table, describe_layers, filter_rows
from explain.structure.module_graph import build_module_graph, describe_module
from tests.conftest import in_process

FORMATS = ("safetensors", "torchscript", "export")


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    buf.seek(0)
    return torch.jit.load(buf)


def as_format(module: nn.Module, fmt: str, spec: InputSpec, example: torch.Tensor) -> LoadedModel:
    """The same weights as an eager, TorchScript or torch.export LoadedModel."""
    if fmt == "torchscript":
        return LoadedModel(_script(module), "torchscript", "x", spec)
    if fmt == "export":
        batch = torch.export.Dim("batch", min=1, max=1024)
        ep = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        return LoadedModel(ep.module(), "export", "x", spec, exported_program=ep)
    return LoadedModel(module, fmt, "x", spec)


SAMPLES = ("shapes", "cancer", "sentiment")
SAMPLE_FILES = {"safetensors": "model.safetensors", "torchscript": "model.torchscript.pt", "export": "model.pt2"}
SAMPLE_ROOT = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def sample_models():
    """The shipped sample models in all three formats, loaded as a user's files are, and 4 of their inputs."""
    from explain.loading.loader import load_model

    out = {}
    for name in SAMPLES:
        folder = SAMPLE_ROOT / name
        with np.load(folder / "samples.npz", allow_pickle=False) as z:
            x = torch.from_numpy(z["inputs"][:4])
        models = {fmt: load_model(folder / file) for fmt, file in SAMPLE_FILES.items()}
        out[name] = (models["safetensors"].module, x, models)
    return out


@pytest.fixture(scope="module")
def tables(sample_models):
    """(sample, format) -> layer table, each built once."""
    cache = {}

    def get(sample: str, fmt: str):
        if (sample, fmt) not in cache:
            _, x, models = sample_models[sample]
            cache[sample, fmt] = build_layer_table(models[fmt], x)
        return cache[sample, fmt]

    return get


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_parameters_add_up_in_every_format(sample_models, tables, sample):
    module, x, models = sample_models[sample]
    total = sum(p.numel() for p in module.parameters())
    for fmt in models:
        table = tables(sample, fmt)
        assert table.total_parameters == total, fmt
        assert sum(r.own_parameters for r in table.rows) == total, fmt
        # collapsed to any depth, the visible rows still account for every parameter once
        has_children = {r.name for r in table.rows for c in table.rows if r.name != c.name and
                         (c.name.startswith(r.name + ".") or (not r.name and c.name))}
        for depth in range(1, table.max_depth + 1):
            frontier = sum(r.parameters for r in table.rows
                           if r.depth == depth or (r.depth < depth and r.name not in has_children))
            inner_own = sum(r.own_parameters for r in table.rows if r.depth < depth and r.name in has_children)
            assert frontier + inner_own == total, (fmt, depth)


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_shapes_and_flops_agree_across_formats(sample_models, tables, sample):
    module, x, models = sample_models[sample]
    eager = {r.name: r for r in tables(sample, "safetensors").rows}
    assert eager[""].output_shape == tuple(module(x).shape)
    for fmt in ("torchscript", "export"):
        table = tables(sample, fmt)
        assert table.total_flops == eager[""].flops, fmt
        for r in table.rows:
            if r.output_shape is not None and r.name in eager and eager[r.name].output_shape is not None:
                assert r.output_shape == eager[r.name].output_shape, (fmt, r.name)
            if r.flops is not None and r.name in eager and eager[r.name].calls:
                assert r.flops == eager[r.name].flops, (fmt, r.name)


def test_static_batch_export_table(sample_models, tables):
    """A .pt2 exported for batch 1 is probed on one input; its FLOPs are the per-input share."""
    from explain.loading.loader import load_model

    _, x, models = sample_models["sentiment"]
    static = load_model(SAMPLE_ROOT / "sentiment" / "model_static.pt2")
    assert static.fixed_batch_size == 1
    table = build_layer_table(static, x)
    assert table.batch_size == 1
    assert table.total_flops * x.shape[0] == tables("sentiment", "export").total_flops


def test_flops_equal_analytic_counts_for_linear_and_conv():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 7)
    spec = InputSpec("tabular", (7,))
    for fmt in FORMATS:
        rows = {r.name: r for r in build_layer_table(as_format(mlp, fmt, spec, x), x).rows}
        assert rows["0"].flops == 2 * 4 * 7 * 5, fmt  # 2·batch·in·out
        assert rows["2"].flops == 2 * 4 * 5 * 3, fmt
        assert rows["1"].flops == 0, fmt  # element-wise ops count 0
        assert rows[""].flops == 280 + 120, fmt
        assert rows[""].flop_share == 1.0 and rows["0"].flop_share == pytest.approx(280 / 400)

    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2)).eval()
    x = torch.randn(2, 3, 10, 10)
    spec = InputSpec("image", (3, 10, 10))
    for fmt in FORMATS:
        rows = {r.name: r for r in build_layer_table(as_format(conv, fmt, spec, x), x).rows}
        # 2 · N · Cout · Hout · Wout · Cin · k²
        assert rows["0"].flops == 2 * 2 * 8 * 10 * 10 * 3 * 9, fmt
        assert rows["1"].flops == 2 * 2 * 4 * 4 * 4 * 8 * 9, fmt
        assert rows["1"].output_shape == (2, 4, 4, 4), fmt


def test_attention_flops_are_counted(sample_models, tables):
    """MultiheadAttention = in-projection + Q·Kᵀ + P·V + out-projection (CPU fused kernel counted too)."""
    module, x, models = sample_models["sentiment"]
    rows = {r.name: r for r in tables("sentiment", "safetensors").rows}
    n, length, d = x.shape[0], x.shape[1], module.head.in_features
    expected = 2 * n * length * d * 3 * d + 2 * 2 * n * length * length * d + 2 * n * length * d * d
    assert rows["encoder.layers.0.self_attn"].flops == expected


def test_torchscript_says_what_it_cannot_see(sample_models, tables):
    module, x, models = sample_models["sentiment"]
    table = tables("sentiment", "torchscript")
    rows = {r.name: r for r in table.rows}
    d, k = module.head.in_features, module.head.out_features
    assert rows[""].flops == table.total_flops > 0
    assert rows["encoder.layers.0.self_attn"].output_shape is None  # inside scripted control flow
    assert rows["encoder.layers.0"].output_shape == (4, 16, d)
    assert rows["head"].flops == 2 * 4 * d * k
    assert any("TorchScript" in note for note in table.notes)


def test_describe_layers_rows():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    rows = describe_layers(LoadedModel(mlp, "safetensors", "x", InputSpec("tabular", (7,))), np.zeros((2, 7), np.float32))
    assert [r["name"] for r in rows] == ["", "0", "1", "2"]
    assert set(rows[0]) >= {"name", "type", "output_shape", "parameters", "flops"}
    assert rows[1] == {"name": "0", "type": "Linear", "output_shape": [2, 5], "parameters": 40, "flops": 140, "depth": 1}


def test_filter_and_tree_order(tables):
    table = tables("shapes", "export")
    names = [r.name for r in table.rows]
    assert names.index("layer1") < names.index("layer1.conv1") < names.index("layer2")
    assert {r.depth for r in filter_rows(table.rows, max_depth=1)} == {0, 1}
    assert {r.type for r in filter_rows(table.rows, query="conv2d")} == {"Conv2d"}
    for fmt in FORMATS:  # a ModuleList is a namespace, not a layer or a level
        rows = {r.name: r for r in tables("sentiment", fmt).rows}
        assert "encoder.layers" not in rows, fmt
        assert rows["encoder.layers.0"].depth == 2 and rows["encoder.layers.0.self_attn"].depth == 3, fmt


def test_module_graph_collapses_and_caps(tables):
    table = tables("shapes", "safetensors")
    g1 = build_module_graph(table, max_depth=1)
    assert g1.shown == [r.name for r in table.rows if r.depth <= 1]
    assert g1.dot.count("->") == len(g1.shown) - 1
    below = sum(1 for r in table.rows if r.name.startswith("layer1."))  # conv1 bn1 relu conv2 bn2 (+ downsample)
    assert f"+{below} submodules" in g1.dot
    capped = build_module_graph(table, max_depth=3, max_nodes=5)
    assert capped.truncated and len(capped.shown) == 5
    detail = describe_module(table, "layer1")
    assert detail["submodules"] == below and detail["row"].parameters == sum(c.parameters for c in detail["children"])


def test_activation_stats_known_answer():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([-1.0, 1.0, -1.0]))
    model = nn.Sequential(layer, nn.ReLU()).eval()
    lm = LoadedModel(model, "safetensors", "x", InputSpec("tabular", (4,)))
    rows = {r["name"]: r for r in tabulate_activations(build_layer_table(lm, torch.randn(6, 4)))}
    relu = rows["1"]
    assert relu["zero_fraction"] == pytest.approx(2 / 3)
    assert relu["dead_fraction"] == pytest.approx(2 / 3)
    assert relu["mean"] == pytest.approx(1 / 3)
    assert rows["0"]["dead_fraction"] == 0.0
    stats = {s.name: s for s in compute_weight_stats(lm)}
    assert stats["0.bias"].norm == pytest.approx(3 ** 0.5)
    assert stats["0.weight"].zero_fraction == 1.0
    counts, edges = compute_weight_histogram(lm, "0.bias", bins=2)
    assert counts.tolist() == [2, 1] and edges[0] == -1.0
    with pytest.raises(IncompatibleInput):
        compute_weight_histogram(lm, "nope")


def test_probe_hooks_removed_after_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    lm = LoadedModel(model, "safetensors", "x", InputSpec("tabular", (5,)))
    with pytest.raises(IncompatibleInput):
        build_layer_table(lm, torch.randn(2, 5))  # the model raises: 5 features into Linear(4, 3)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.backends.mha.get_fastpath_enabled()


def test_layer_importance_completeness_on_an_mlp():
    """Each layer on the only path carries the whole logit change: Σ attribution = f(x) − f(0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    lm = LoadedModel(model, "safetensors", "x", InputSpec("tabular", (6,)))
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    result = compute_layer_importance(lm, x, depth=1, steps=32)
    assert sorted(result.layers) == ["0", "1", "2"]
    with torch.no_grad():
        logits, base = model(torch.from_numpy(x)), model(torch.zeros(1, 6))
    delta = (logits - base)[np.arange(5), result.target].mean().item()
    np.testing.assert_allclose(result.total, delta, atol=2e-3)
    assert np.all(result.magnitude >= np.abs(result.total) - 1e-6)


def test_layer_importance_for_pt2_equals_eager_and_torchscript_is_refused(sample_models):
    _, x, models = sample_models["cancer"]
    with pytest.raises(IncompatibleInput, match="hooks"):
        compute_layer_importance(models["torchscript"], x.numpy())
    assert compute_layer_importance(models["safetensors"], x.numpy(), depth=1, steps=2).layers == ["body", "head"]
    eager = compute_layer_importance(models["safetensors"], x.numpy(), depth=2, steps=8)
    exported = compute_layer_importance(models["export"], x.numpy(), depth=2, steps=8)  # unflattened .pt2
    assert exported.layers == eager.layers
    np.testing.assert_allclose(exported.magnitude, eager.magnitude, rtol=1e-4, atol=1e-6)


def test_grad_cam_on_the_image_model(sample_models):
    module, x, models = sample_models["shapes"]
    lm = models["safetensors"]
    layers = grad_cam_layers(lm, x.numpy())
    assert layers[0] == "layer3"
    cam = compute_grad_cam(lm, x.numpy(), "layer3")
    n = x.shape[0]
    assert cam.shape == (n, 32, 32)
    peaks = cam.reshape(n, -1).max(1)
    assert cam.min() >= 0 and np.all(np.isclose(peaks, 1.0, atol=1e-5) | (peaks == 0))
    assert all(not m._forward_hooks and not m._backward_hooks for m in module.modules())
    np.testing.assert_allclose(compute_grad_cam(models["export"], x.numpy(), "layer3"), cam, atol=1e-5)


def test_one_hookability_check_on_the_loaded_model(sample_models):
    """`LoadedModel.hookable_module`: eager modules as they are, a dynamic-batch .pt2 unflattened;
    TorchScript and a fixed-batch .pt2 refused with the reason; ``exported=False`` refuses any .pt2."""
    from explain.loading.loader import load_model

    module, _, models = sample_models["shapes"]
    eager, scripted = models["safetensors"], models["torchscript"]
    exported = in_process(models["export"])  # the graph in this process, as inside its model process
    static = in_process(load_model(SAMPLE_ROOT / "shapes" / "model_static.pt2"))
    assert eager.is_eager and not exported.is_eager and not scripted.is_eager
    assert eager.hookable_module("Grad-CAM") is module and eager.hook_incompatibility("Grad-CAM") is None
    unflattened = exported.hookable_module("Grad-CAM")
    assert "layer3.conv1" in dict(unflattened.named_modules()) and exported.hook_incompatibility("Grad-CAM") is None
    assert exported.hookable_module("Grad-CAM") is unflattened  # built once
    for refused in (scripted, static):
        assert "hooks" in refused.hook_incompatibility("Grad-CAM")
        with pytest.raises(IncompatibleInput, match="hooks"):
            refused.hookable_module("Grad-CAM")
    assert exported.hook_incompatibility("Layer attribution", exported=False)
    with pytest.raises(IncompatibleInput, match="hooks"):
        exported.hookable_module("Layer attribution", exported=False)


def test_the_grad_cam_method_and_the_structure_grad_cam_are_one(sample_models):
    """The method's map is the Structure page's before normalisation, on the eager model and the .pt2;
    the method's default layer is the first of the one candidate list, and it runs on a dynamic .pt2."""
    from explain.output.cache import ATTRIBUTION_CACHE
    from explain.output.methods import compatible_methods, get_method
    from explain.output.methods.grad_cam import grad_cam_incompatibility

    _, x, models = sample_models["shapes"]
    x = x.numpy()
    method = get_method("grad_cam")
    assert "grad_cam" in {m.name for m in compatible_methods(models["export"])}
    assert grad_cam_incompatibility(models["torchscript"])
    for fmt in ("safetensors", "export"):
        ATTRIBUTION_CACHE.clear()
        raw = method.explain(models[fmt], x, batch_size=3)  # chunks of 2 + a padded 1 on the vetted .pt2
        assert raw.params["layer"] == grad_cam_layers(models[fmt], x)[0] == "layer3"
        assert np.all(raw.values == raw.values[:, :1])  # one map broadcast over the channels
        maps = raw.values[:, 0]  # [N, H, W]
        peaks = maps.reshape(len(x), -1).max(1)[:, None, None]
        np.testing.assert_allclose(maps / peaks, compute_grad_cam(models[fmt], x, "layer3"), atol=1e-6)
    np.testing.assert_allclose(method.explain(models["export"], x, layer="layer2").values,
                               method.explain(models["safetensors"], x, layer="layer2").values, atol=1e-6)
    with pytest.raises(UsageError, match="cannot run on layer"):
        method.explain(models["safetensors"], x, layer="layer1.relu")  # runs twice in its block
    with pytest.raises(UsageError, match="no layer"):
        compute_grad_cam(models["safetensors"], x, "nope")


# --------------------------------------------------------------------------
# the depth a layer view opens at (issue 20, item 3)
# --------------------------------------------------------------------------
def _rows(*named: tuple[str, int]) -> list[dict]:
    return [{"name": n, "depth": d} for n, d in named]


def test_default_depth_shows_what_the_repeated_blocks_are_made_of():
    from explain.structure.layers import default_depth

    hf_vit = _rows(("", 0), ("model", 1), ("model.vit", 2), ("model.vit.embeddings", 3),
                   ("model.vit.layers.0", 3), ("model.vit.layers.0.attention", 4), ("model.vit.layers.0.attention.q_proj", 5),
                   ("model.vit.layers.0.mlp", 4), ("model.vit.layers.0.mlp.fc1", 5), ("model.classifier", 2))
    assert default_depth(hf_vit) == 4  # the encoder layers' attention and MLP
    resnet = _rows(("", 0), ("conv1", 1), ("layer1", 1), ("layer1.0", 2), ("layer1.0.conv1", 3), ("fc", 1))
    assert default_depth(resnet) == 3
    mlp = _rows(("", 0), ("body", 1), ("body.0", 2), ("body.1", 2), ("head", 1))  # numbered leaves: no blocks
    assert default_depth(mlp) == 2
    assert default_depth(_rows(("", 0), ("fc", 1))) == 1  # never deeper than the table
    assert default_depth([]) == 0


def test_default_depth_of_a_table_reaches_the_sentiment_encoder_layers_submodules():
    from explain.structure.layers import default_depth, filter_rows
    from sample_models import load_sample, sample_inputs

    table = build_layer_table(load_sample("sentiment"), sample_inputs("sentiment")["inputs"][:2])
    shown = {r.name for r in filter_rows(table.rows, max_depth=default_depth(table.rows))}
    assert "encoder.layers.0.self_attn" in shown and "encoder.layers.0.linear1" in shown


def test_fast_path_switch_is_restored_when_blocks_of_two_threads_overlap():
    """A enters, B enters, A leaves, B leaves: saving and restoring per block left the fast path off for
    good (B saved A's "off"); the counted switch puts back the setting from before A."""
    import threading

    from explain.kernels import no_mha_fastpath

    assert torch.backends.mha.get_fastpath_enabled()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with no_mha_fastpath():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with no_mha_fastpath():
            b_in.set()
            a_out.wait(5)
            assert not torch.backends.mha.get_fastpath_enabled()  # still off for B after A left

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert torch.backends.mha.get_fastpath_enabled()
