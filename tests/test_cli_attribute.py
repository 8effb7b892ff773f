"""`python -m explain attribute` and `methods`: JSON on stdout, OUT.npz, exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_methods import load_case

from explain.cli import attribute as attribute_cli
from explain.cli import main
from explain.cli import model_arg as model_arg_cli


@pytest.fixture
def cancer(monkeypatch, tmp_path):
    model, x = load_case("cancer", n=5)
    monkeypatch.setattr(attribute_cli, "load_model_arg", lambda path, spec=None, inputs=None: model)
    np.save(tmp_path / "x.npy", x)
    return model, x, tmp_path


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def test_attribute_integrated_gradients_writes_npz_and_json(cancer, capsys):
    model, x, tmp = cancer
    out = tmp / "out.npz"
    code, payload, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "integrated_gradients",
        "--steps", "32", "--baseline", "zero", "--out", str(out),
    ])
    assert code == 0, err
    assert payload["method"] == "integrated_gradients"
    assert payload["targets"] == model.predict_logits(x).argmax(1).tolist()
    assert len(payload["completeness_error"]) == 5
    assert all(e is not None and e < 0.1 for e in payload["completeness_error"])
    assert {"seconds", "device", "precision"} <= set(payload)
    data = np.load(out)
    assert data["values"].shape == x.shape
    assert data["targets"].tolist() == payload["targets"]
    np.testing.assert_allclose(data["completeness_error"], payload["completeness_error"], rtol=1e-9)


def test_attribute_explicit_target_and_file_baseline(cancer, capsys):
    model, x, tmp = cancer
    np.save(tmp / "b.npy", np.full((1, 30), 0.5, dtype=np.float32))
    code, payload, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "integrated_gradients",
        "--target", "1", "--steps", "16", "--baseline", str(tmp / "b.npy"), "--out", str(tmp / "o.npz"),
    ])
    assert code == 0, err
    assert payload["targets"] == [1] * 5
    base = np.load(tmp / "o.npz")["base_value"]
    expected = model.predict_logits(np.full((5, 30), 0.5, dtype=np.float32))[:, 1]
    np.testing.assert_allclose(base, expected, rtol=1e-5)


def test_attribute_unknown_method_is_usage_error(cancer, capsys):
    _, _, tmp = cancer
    code, payload, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "nope", "--out", str(tmp / "o.npz"),
    ])
    assert code == 2 and payload is None
    assert "Unknown method" in err and "Traceback" not in err


@pytest.mark.parametrize("sample,present,absent", [
    ("cancer", {"integrated_gradients", "feature_ablation", "deeplift_shap"}, {"occlusion", "grad_cam"}),
    ("sentiment", {"layer_integrated_gradients", "integrated_gradients"}, {"occlusion", "shap_gradient"}),
])
def test_methods_lists_compatible_methods_with_params(monkeypatch, capsys, sample, present, absent):
    model, _ = load_case(sample, n=1)
    monkeypatch.setattr(model_arg_cli, "load_model_arg", lambda path, spec=None, inputs=None: model)
    code, payload, err = run_cli(capsys, ["methods", sample, "--all"])
    assert code == 0, err
    names = {m["name"] for m in payload["methods"]}
    assert present <= names and not absent & names
    ig = next(m for m in payload["methods"] if m["name"] == "integrated_gradients")
    assert ig["params"]["steps"]["default"] == 50 and ig["params"]["steps"]["kind"] == "int"
    assert {r["name"] for r in payload["incompatible"]} >= absent


@pytest.mark.parametrize("method,extra", [
    ("saliency", []), ("smoothgrad", ["--steps", "3"]), ("gradient_shap", ["--steps", "3", "--background", "BG"]),
    ("feature_ablation", ["--baseline", "mean"]), ("deeplift_shap", ["--background", "BG"]),
])
def test_attribute_every_kind_of_method(cancer, capsys, method, extra):
    model, x, tmp = cancer
    np.save(tmp / "bg.npy", x[::-1].copy())
    extra = [str(tmp / "bg.npy") if e == "BG" else e for e in extra]
    code, payload, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", method, "--device", "cpu",
        "--precision", "fp32", "--out", str(tmp / "o.npz"), *extra,
    ])
    assert code == 0, err
    assert payload["method"] == method and payload["device"] == "cpu" and payload["precision"] == "fp32"
    assert np.load(tmp / "o.npz")["values"].shape == x.shape


def test_attribute_flag_the_method_does_not_take_is_usage_error(cancer, capsys):
    _, _, tmp = cancer
    code, _, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "saliency", "--steps", "5",
        "--out", str(tmp / "o.npz"),
    ])
    assert code == 2 and "takes no --steps" in err


def test_attribute_cuda_without_gpu_is_refused(cancer, capsys):
    _, _, tmp = cancer
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli(capsys, [
        "attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "integrated_gradients",
        "--device", "cuda", "--out", str(tmp / "o.npz"),
    ])
    assert code == 3 and "CUDA" in err


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GLASSBOX_HOME", str(home))
    return home


def test_attribute_runs_as_a_job_in_the_queue_and_saves_a_run(own_home, tmp_path, capsys):
    """The CLI's one path is the queue: a job (run here, as no team worker is configured) whose
    result is a saved run holding exactly what OUT.npz holds."""
    from explain.cli.workspace_arg import cli_actor
    from explain.workspace import open_workspace

    x = load_case("cancer", n=4)[1]
    np.save(tmp_path / "x.npy", x)
    code, payload, err = run_cli(capsys, ["attribute", "cancer", "--inputs", str(tmp_path / "x.npy"),
                                          "--method", "saliency", "--out", str(tmp_path / "o.npz")])
    assert code == 0, err
    ws = open_workspace(home=own_home)
    try:
        (job,) = ws.jobs.list(cli_actor())
        assert (job.status, job.run, job.owner, job.kind) == ("done", payload["run"], cli_actor().name, "explain")
        assert job.worker.endswith(":cli") and job.params["model"] == "cancer"
        run = ws.runs.open(cli_actor(), payload["run"])
        np.testing.assert_array_equal(run.results["0/values"], np.load(tmp_path / "o.npz")["values"])
        np.testing.assert_array_equal(run.inputs["inputs"], x)
    finally:
        ws.close()


def test_attribute_with_an_external_worker_is_run_by_that_worker(own_home, tmp_path, capsys, monkeypatch):
    import threading

    from explain.cli.workspace_arg import cli_actor, cli_workspace
    from explain.service.worker import Worker

    monkeypatch.setenv("GLASSBOX_EXTERNAL_WORKER", "1")
    x = load_case("cancer", n=3)[1]
    np.save(tmp_path / "x.npy", x)
    ws = cli_workspace()
    worker = Worker(ws, name="gpu-0", poll_s=0.05)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        code, payload, err = run_cli(capsys, ["attribute", "cancer", "--inputs", str(tmp_path / "x.npy"),
                                              "--method", "integrated_gradients", "--out", str(tmp_path / "o.npz")])
    finally:
        worker.stop.set()
        thread.join(10)
    assert code == 0, err
    (job,) = ws.jobs.list(cli_actor())
    assert (job.worker, job.status, job.run) == ("gpu-0", "done", payload["run"])
    ws.close()
