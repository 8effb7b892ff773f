"""The command-line contract for every subcommand: one JSON object or one stderr line, exit 0/2/3, whole files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explain.cli import attention as attention_cli
from explain.cli import attribute as attribute_cli
from explain.cli import main
from explain.cli.out_file import replace_atomically
from explain.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


class _Boom(torch.nn.Module):
    """A model that loads and runs on zeros, but whose forward raises on large inputs."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        if bool(x.sum() > 1000.0):
            raise RuntimeError("boom: the model refuses large inputs")
        return self.lin(x)


@pytest.fixture(scope="module")
def boom(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("boom")
    torch.jit.save(torch.jit.script(_Boom()), d / "boom.pt")
    (d / "boom.json").write_text(json.dumps({"modality": "tabular", "input_shape": [4], "class_names": ["a", "b"]}))
    np.save(d / "big.npy", np.full((3, 4), 500.0, np.float32))
    return d


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explain", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() and proc.stderr.strip().count("\n") == 0, proc.stderr
    return proc.stderr.strip()


def test_a_model_whose_forward_raises_exits_3_with_one_line(boom):
    proc = _cli("inspect", boom / "boom.pt", "--spec", boom / "boom.json", "--inputs", boom / "big.npy", "--layers")
    assert proc.returncode == 3
    line = _one_line(proc)
    assert "inspect failed" in line and "boom: the model refuses large inputs" in line


def test_a_failed_run_keeps_the_old_out_file(boom, tmp_path):
    out = tmp_path / "attr.npz"
    out.write_bytes(b"the previous result")
    proc = _cli("attribute", boom / "boom.pt", "--spec", boom / "boom.json", "--inputs", boom / "big.npy",
                "--method", "saliency", "--out", out)
    assert proc.returncode == 3
    # the job failed in the worker: its one line still names the TorchScript error's cause
    assert "boom: the model refuses large inputs" in _one_line(proc)
    assert out.read_bytes() == b"the previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["attr.npz"]


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), MemoryError(),
                                   ValueError("line one\nline two")])
def test_unexpected_exceptions_become_one_line_and_exit_3(monkeypatch, capsys, error):
    def explode(args):
        raise error

    monkeypatch.setattr(attention_cli, "run", explode)
    code = main(["attention", "model.pt", "--inputs", "x.npy", "--out", "a.npz"])
    captured = capsys.readouterr()
    assert code == 3 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: attention failed (")
    assert type(error).__name__ in captured.err and "line two" not in captured.err


def test_interrupt_is_one_line_too(monkeypatch, capsys):
    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(attention_cli, "run", interrupt)
    assert main(["attention", "m.pt", "--inputs", "x.npy", "--out", "a.npz"]) == 130
    assert capsys.readouterr().err.count("\n") == 1


def test_a_crash_while_writing_leaves_the_old_file_and_no_temporary(monkeypatch, capsys, tmp_path):
    from test_methods import load_case

    model, x = load_case("cancer", n=3)
    monkeypatch.setattr(attribute_cli, "load_model_arg", lambda path, spec=None, inputs=None: model)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")

    def half_write(path, **arrays):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise MemoryError

    monkeypatch.setattr(attribute_cli.np, "savez_compressed", half_write)
    code = main(["attribute", "cancer", "--inputs", str(tmp_path / "x.npy"), "--method", "saliency",
                 "--out", str(out)])
    assert code == 3 and capsys.readouterr().err.count("\n") == 1
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "x.npy"]


def test_replace_atomically_renames_into_place_and_reports_unwritable_folders(tmp_path):
    out = tmp_path / "deeper" / "r.npz"
    with replace_atomically(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".npz" and tmp.name.startswith(".r.")
        np.savez_compressed(tmp, a=np.arange(3))  # keeps the name: it already ends in .npz
    assert np.load(out)["a"].tolist() == [0, 1, 2] and sorted(p.name for p in out.parent.iterdir()) == ["r.npz"]
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError, match="Cannot write"):
        with replace_atomically(tmp_path / "file" / "x.html") as tmp:
            tmp.write_text("never")
