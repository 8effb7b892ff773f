"""`python -m explain attribute` and `methods`: JSON on stdout, OUT.npz, exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from explain.cli import main
from explain.cli import attribute as attribute_cli
from test_methods import load_case


@pytest.fixture
def cancer(monkeypatch, tmp_path):
    model, x = load_case("cancer", n=5)
    monkeypatch.setattr(attribute_cli, "load_model_arg", lambda path, spec=None: model)
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
