"""`python -m explain inspect`: JSON keys and exit codes 0 / 2 / 3."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from explain.cli import main
from explain.loading.architectures import build_architecture
from explain.spec import InputSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec("tabular", (30,), class_names=["benign", "malignant"], name="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    model = build_architecture("tabular_mlp").eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"glassbox.architecture": "tabular_mlp", "glassbox.config": "{}", "glassbox.spec": SPEC.to_json()}
    save_file(sd, str(d / "model.safetensors"), metadata=meta)
    save_file(sd, str(d / "bare.safetensors"))
    (d / "spec.json").write_text(SPEC.to_json())
    np.save(d / "inputs.npy", np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    torch.save({"model_state_dict": sd, "evil": Evil()}, d / "evil.pt")
    return d


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explain", "inspect", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_inspect_prints_the_model_description(files):
    proc = _run(str(files / "model.safetensors"), "--inputs", str(files / "inputs.npy"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "safetensors" and out["modality"] == "tabular"
    assert out["sha256"] == hashlib.sha256((files / "model.safetensors").read_bytes()).hexdigest()
    assert out["input_shape"] == [30] and out["class_names"] == ["benign", "malignant"]
    assert out["parameters"] == 30 * 64 + 64 + 64 * 32 + 32 + 32 * 2 + 2
    assert out["name"] == "tiny" and out["fixed_batch_size"] is None
    assert out["inputs"]["shape"] == [4, 30]


def test_inspect_refuses_unsafe_files_with_one_line_and_exit_3(files):
    proc = _run(str(files / "evil.pt"), "--spec", str(files / "spec.json"))
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr.startswith("refused:") and "posix.system" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (files / "PWNED").exists()


def test_spec_and_sample_inputs_options(files, capsys):
    assert main(["inspect", str(files / "bare.safetensors"), "--spec", str(files / "spec.json")]) == 0
    assert json.loads(capsys.readouterr().out)["class_names"] == ["benign", "malignant"]
    assert main(["inspect", str(files / "bare.safetensors"), "--inputs", str(files / "inputs.npy")]) == 0
    out = json.loads(capsys.readouterr().out)  # spec inferred from the array
    assert out["modality"] == "tabular" and out["class_names"] == ["class 0", "class 1"]
    assert main(["inspect", str(files / "bare.safetensors")]) == 3
    err = capsys.readouterr().err
    assert "no input spec" in err and "--spec" in err and "--inputs" in err  # which flags to give
    assert main(["inspect", str(files / "missing.pt")]) == 2  # as for every subcommand (load_model_arg)
    assert main(["inspect"]) == 2  # argparse usage error


def test_layers_flag_lists_the_layers(files, capsys):
    assert main(["inspect", str(files / "model.safetensors"), "--layers"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[0]["parameters"] == 4130 and {"name", "type", "output_shape", "flops"} <= set(layers[0])
