"""Comparing two versions (`explain.compare`, `python -m explain compare`): known answers.

A version against itself agrees everywhere with rank correlations 1; a copy with half of each
layer's weights zeroed loses exactly that many non-zero parameters and agrees where a direct
forward pass says; an fp16 round-trip agrees away from the decision boundary with maps ranked
alike; the CLI compares two TorchScript files that carry no spec, end to end through a job.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from explain.cli import main
from explain.compare.comparison import compare_models
from explain.compare.structure import layers_changed
from explain.model import LoadedModel
from explain.spec import InputSpec

SPEC = InputSpec("tabular", (6,), class_names=["a", "b", "c"], feature_names=[f"f{i}" for i in range(6)])
IMAGE_SPEC = InputSpec("image", (2, 6, 6), class_names=["x", "y"])
N = 24
#: FLOPs of one row through Linear(6, 16) and Linear(16, 3): a multiply-add counts 2
MLP_FLOPS = 2 * (6 * 16 + 16 * 3)
MLP_PARAMETERS = 6 * 16 + 16 + 16 * 3 + 3


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2)).eval()


def pruned(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy with the smaller-magnitude half of each layer's weight zeroed; the number zeroed."""
    out, zeroed = copy.deepcopy(module), 0
    with torch.no_grad():
        for layer in out.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                w = layer.weight
                k = w.numel() // 2
                w.view(-1)[w.abs().view(-1).argsort()[:k]] = 0.0
                zeroed += k
    return out, zeroed


def half_round_trip(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).half().float()


def loaded(module: nn.Module, spec: InputSpec = SPEC) -> LoadedModel:
    return LoadedModel(module, "safetensors", f"sha-{id(module)}", spec)


def direct_predictions(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).argmax(1).numpy()


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def same(inputs):
    model = loaded(mlp())
    return compare_models(model, model, inputs, "integrated_gradients", {"steps": 16})


def test_version_against_itself_agrees_everywhere(same):
    d = same.to_dict()
    assert d["outputs"]["agreement"] == 1.0
    assert d["outputs"]["flipped"] == []
    assert d["outputs"]["max_probability_change"] == 0.0
    assert len(d["attributions"]["rank_correlation"]) == N
    np.testing.assert_allclose(d["attributions"]["rank_correlation"], 1.0, atol=1e-12)
    assert d["attributions"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert d["structure"]["parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS]
    assert d["structure"]["nonzero_parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS]
    assert d["structure"]["flops"] == [MLP_FLOPS, MLP_FLOPS]
    assert d["structure"]["layers_changed"] == []
    assert same.structure.a.dtypes == ["float32"]
    from explain.viz.compare import MIN_SHIFT_AXIS, figure_probability_shifts

    shifts = figure_probability_shifts(same)  # one bar at 0, on an axis of probabilities, not of float rounding
    assert tuple(shifts.layout.xaxis.range) == pytest.approx((0.0, MIN_SHIFT_AXIS), rel=1e-3)
    assert sum(len(t.x) for t in shifts.data) == N


def test_pruned_copy_loses_exactly_the_zeroed_weights(inputs):
    base = mlp()
    cut, zeroed = pruned(base)
    assert zeroed == (6 * 16) // 2 + (16 * 3) // 2
    result = compare_models(loaded(base), loaded(cut), inputs, "integrated_gradients", {"steps": 16})
    d = result.to_dict()
    assert d["structure"]["parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS]
    assert d["structure"]["nonzero_parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS - zeroed]
    assert d["structure"]["layers_changed"] == []  # same names and shapes: only values changed
    pa, pb = direct_predictions(base, inputs), direct_predictions(cut, inputs)
    assert d["outputs"]["agreement"] == pytest.approx(float((pa == pb).mean()))
    assert d["outputs"]["flipped"] == np.flatnonzero(pa != pb).tolist()
    assert d["outputs"]["flipped"], "the pruned copy should flip some of these inputs"
    with torch.no_grad():
        prob_a = torch.softmax(base(torch.from_numpy(inputs)), 1).numpy()
        prob_b = torch.softmax(cut(torch.from_numpy(inputs)), 1).numpy()
    assert d["outputs"]["max_probability_change"] == pytest.approx(float(np.abs(prob_b - prob_a).max()), abs=1e-6)
    order = result.outputs.order()
    k = len(d["outputs"]["flipped"])
    assert sorted(order[:k]) == d["outputs"]["flipped"]  # flipped inputs listed first, largest shift first
    assert list(result.outputs.shift[order[:k]]) == sorted(result.outputs.shift[order[:k]], reverse=True)
    assert result.most_changed(2) == d["outputs"]["flipped"][:2]
    assert (result.attributions.a.target == pa).all() and (result.attributions.b.target == pa).all()  # A's class


def test_fp16_round_trip_agrees_away_from_the_boundary():
    """Maps of 36 pixels (an image model's, channels summed): fp16's rounding may swap two nearly
    equal values, which costs a rank correlation over so many positions almost nothing."""
    base = cnn()
    x = np.random.default_rng(2).normal(size=(N, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        probs = torch.softmax(base(torch.from_numpy(x)), 1).numpy()
    clear = x[np.abs(probs[:, 0] - probs[:, 1]) > 0.02]  # away from the decision boundary
    assert len(clear) >= N // 2
    d = compare_models(loaded(base, IMAGE_SPEC), loaded(half_round_trip(base), IMAGE_SPEC), clear,
                       "integrated_gradients", {"steps": 16}).to_dict()
    assert d["outputs"]["agreement"] == 1.0 and d["outputs"]["flipped"] == []
    assert min(d["attributions"]["rank_correlation"]) >= 0.99


def test_image_maps_are_compared_as_shown_channels_summed():
    x = np.random.default_rng(1).normal(size=(3, 2, 6, 6)).astype(np.float32)
    base = cnn()
    result = compare_models(loaded(base, IMAGE_SPEC), loaded(half_round_trip(base), IMAGE_SPEC), x, "saliency")
    from explain.training.evolution import spearman

    shown_a, shown_b = result.attributions.a.values.sum(1), result.attributions.b.values.sum(1)  # [N, H, W]
    expected = [spearman(shown_a[i], shown_b[i]) for i in range(3)]
    np.testing.assert_allclose(result.attributions.rank_correlation, expected)
    assert result.attributions.a.values.dtype == np.float32


def test_layers_added_removed_and_changed_by_name_and_shape(inputs):
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3), nn.Softmax(dim=1)).eval()
    a = compare_models(loaded(mlp()), loaded(wider), inputs[:2], "saliency").structure
    changes = {c["name"]: c["change"] for c in layers_changed(a.a, a.b)}
    assert changes == {"0": "changed", "1": "changed", "2": "changed", "3": "added"}  # the ReLU: its output shape
    assert a.b.flops == 2 * (6 * 32 + 32 * 3)
    back = {c["name"]: c["change"] for c in layers_changed(a.b, a.a)}
    assert back["3"] == "removed"


def test_cli_compares_two_torchscript_files_without_a_spec(tmp_path, inputs, capsys):
    base = mlp()
    cut, zeroed = pruned(base)
    x = inputs[:8]
    for name, module in (("a.pt", base), ("b.pt", cut)):
        torch.jit.save(torch.jit.trace(module, torch.from_numpy(x[:1])), str(tmp_path / name))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "c.json"
    code = main(["compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--inputs", str(tmp_path / "x.npy"),
                 "--method", "integrated_gradients", "--steps", "8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    pa, pb = direct_predictions(base, x), direct_predictions(cut, x)
    assert payload["outputs"]["flipped"] == np.flatnonzero(pa != pb).tolist()
    assert payload["outputs"]["agreement"] == pytest.approx(float((pa == pb).mean()))
    assert payload["structure"]["nonzero_parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS - zeroed]
    assert payload["structure"]["parameters"] == [MLP_PARAMETERS, MLP_PARAMETERS]
    assert len(payload["attributions"]["rank_correlation"]) == 8
    assert payload["run"]
    written = json.loads(out.read_text())
    assert written["outputs"] == payload["outputs"] and written["structure"] == payload["structure"]

    # the files are registry versions now: the same comparison by reference, saved as another run
    from explain.cli.workspace_arg import cli_actor, cli_workspace
    from explain.digest import digest_bytes

    ws, actor = cli_workspace(), cli_actor()
    ref_a, ref_b = (ws.registry.find_by_sha(actor, digest_bytes((tmp_path / f).read_bytes())).ref for f in ("a.pt", "b.pt"))
    code = main(["compare", ref_a, ref_b, "--inputs", str(tmp_path / "x.npy"), "--method", "integrated_gradients",
                 "--steps", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    by_ref = json.loads(captured.out)
    assert by_ref["outputs"] == payload["outputs"] and by_ref["structure"] == payload["structure"]
    assert by_ref["run"] != payload["run"]
    info = ws.runs.info(actor, by_ref["run"])
    assert (info.page, info.params["a"], info.params["b"]) == ("comparison", ref_a, ref_b)


def test_cli_refuses_an_unknown_reference_in_one_line(tmp_path, inputs, capsys):
    np.save(tmp_path / "x.npy", inputs[:2])
    code = main(["compare", "nosuch", "other", "--inputs", str(tmp_path / "x.npy"), "--method", "saliency"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nosuch" in err


def _saved(record):
    """``record`` as the run store gives it back: its row's JSON through JSON, its arrays as they are."""
    from dataclasses import fields

    from explain.jsonable import to_json_safe
    from explain.workspace.runs import RunInfo, SavedRun

    values = {f.name: None for f in fields(RunInfo)}
    values.update(id="r1", page=record.page, model=record.model, version=record.version, title=record.title,
                  method=record.method, params=json.loads(json.dumps(to_json_safe(record.params))),
                  summary=json.loads(json.dumps(to_json_safe(record.summary))), environment={})
    return SavedRun(RunInfo(**values), dict(record.inputs), dict(record.results))


def test_a_comparison_run_reads_back_and_makes_the_report_section(inputs):
    from explain.compare.job import comparison_record
    from explain.report.job import carried_runs
    from explain.report.sections import build_report
    from explain.workspace.run_kinds import read_run

    base = mlp()
    cut, _ = pruned(base)
    model = loaded(base)
    result = compare_models(model, loaded(cut), inputs[:6], "saliency", labels=("m@v1", "m@v2"),
                            logs=([("a.csv", b"epoch,loss\n1,0.9\n2,0.5\n")], [("b.csv", b"epoch,loss\n1,0.8\n2,0.7\n")]))
    record = comparison_record(result, model, {"a": "m@v1", "b": "m@v2"},
                               logs=([("a.csv", b"epoch,loss\n1,0.9\n2,0.5\n")], [("b.csv", b"epoch,loss\n1,0.8\n2,0.7\n")]))
    run = _saved(record)
    back = read_run(run)  # the run kind's reader
    assert back.to_dict() == result.to_dict()
    assert back.spec == SPEC and back.labels == ("m@v1", "m@v2")
    assert [h.name for h in back.training] == ["m@v1", "m@v2"]
    np.testing.assert_array_equal(back.attributions.b.values, result.attributions.b.values)

    carried = {f"comparison/inputs/{k}": v for k, v in run.inputs.items()}
    carried.update({f"comparison/results/{k}": v for k, v in run.results.items()})
    (kind, again), = carried_runs({"comparison": run.info.to_dict()}, carried).items()  # rebuilt by the worker
    via_job = read_run(again)
    report = build_report(model, None, methods=("saliency",), comparison=via_job)
    (section,) = [s for s in report.sections if s.title == "Compare"]
    assert section.error is None and section.data == result.to_dict()
    assert len(section.figures) == 2 + 2 * len(result.most_changed()) + 1  # shifts, rho, map pairs, training
    html = report.to_html()
    assert "m@v1" in html and "non-zero parameters" in html
