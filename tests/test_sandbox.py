"""The sandbox child cannot write files, reach the network or signal the server,
and graphs that bomb only at batch sizes above 1 are refused at load (library and CLI).

The bomb models use plain tensor operators only (zeros, ones, add, size, loops),
so a static operator allowlist lets them through to the sandbox.
"""
from __future__ import annotations

import io
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import GlassboxError, TooLarge, UnsafeFile
from explain.loading.loader import load_model
from explain.loading.sandbox import run_in_sandbox
from explain.loading.vetting import probe_torchscript
from explain.spec import SPEC_FILENAME, InputSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec("tabular", (6,), class_names=["a", "b"], name="bomb")
CONTENT = b"precious bytes, not to be touched " * 32
IS_ROOT = os.geteuid() == 0
SMALL_LIMITS = {"GLASSBOX_SANDBOX_MEMORY_MB": "1024", "GLASSBOX_SANDBOX_TIMEOUT_S": "4"}


def _landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, 0, 1)))


@pytest.fixture
def victim():
    """A file the server's user owns (mode 644, in a directory everyone may enter)."""
    directory = Path(tempfile.mkdtemp(prefix="glassbox-victim-"))
    directory.chmod(0o755)
    path = directory / "victim.bin"
    path.write_bytes(CONTENT)
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def small_limits(monkeypatch):
    for key, value in SMALL_LIMITS.items():
        monkeypatch.setenv(key, value)


WRITE_CODE = r"""
import os
report(phase="ready", protections=lock_down())
done = []
attempts = {
    "write": lambda p: open(p, "r+b").write(b"X"),
    "truncate": lambda p: open(p, "wb").close(),
    "create": lambda p: open(p + ".new", "wb").close(),
    "unlink": lambda p: os.unlink(p),
    "cwd": lambda p: open("here.txt", "wb").write(b"X"),
}
for name, attempt in attempts.items():
    try:
        attempt(ARGS["victim"])
        done.append(name)
    except OSError:
        pass
report(ok=not done, done=done)
"""


@pytest.mark.parametrize("skip", [(), ("landlock",), ("user-nobody",)], ids=["all", "nobody-only", "landlock-only"])
def test_child_cannot_write_files(victim, skip):
    if "landlock" in skip and not IS_ROOT:
        pytest.skip("without root there is no user to drop to: Landlock is the layer that stops writes")
    if "user-nobody" in skip and _landlock_abi() < 1:
        pytest.skip("this kernel has no Landlock")
    run = run_in_sandbox(WRITE_CODE, b"", {"victim": str(victim)}, timeout_s=10, skip=skip)
    assert run.final.get("done") == [], run.final
    assert victim.read_bytes() == CONTENT and sorted(p.name for p in victim.parent.iterdir()) == ["victim.bin"]


def test_the_write_test_would_see_a_write(victim):
    """Without the privilege drop and Landlock the same child does write: the test above is meaningful."""
    run = run_in_sandbox(WRITE_CODE, b"", {"victim": str(victim)}, timeout_s=10, skip=("landlock", "user-nobody"))
    assert {"write", "truncate", "create"} <= set(run.final.get("done", [])), run.final


class FileWriter(nn.Module):
    """Writes through a shared memory map of a file: no write() call, so RLIMIT_FSIZE alone does not stop it."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=self.size, dtype=torch.uint8)
        t.fill_(65)
        return x[:, :2] + t[0].float()


@pytest.mark.parametrize("zygote", ["1", "0"], ids=["forked", "fresh"])
def test_torchscript_writing_a_file_through_from_file_fails_and_leaves_it_intact(victim, monkeypatch, zygote):
    monkeypatch.setenv("GLASSBOX_SANDBOX_ZYGOTE", zygote)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(FileWriter(str(victim), len(CONTENT))), buf)
    with pytest.raises(GlassboxError, match="fails on an input"):
        probe_torchscript(buf.getvalue(), SPEC)  # straight to the sandbox, past any static check
    assert victim.read_bytes() == CONTENT


def test_the_from_file_model_does_write_without_the_protections(victim):
    """The same model in a child without the privilege drop and Landlock overwrites the file."""
    from explain.loading.vetting import TORCHSCRIPT_CHILD_CODE as CHILD_CODE

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(FileWriter(str(victim), len(CONTENT))), buf)
    code = CHILD_CODE + 'module = load_graph(DATA)\nreport(phase="ready", protections=lock_down())\n' \
        'module(torch.zeros(1, 6))\nreport(ok=True)\n'
    run = run_in_sandbox(code, buf.getvalue(), {}, timeout_s=10, skip=("landlock", "user-nobody"))
    assert run.ok and victim.read_bytes() == b"A" * len(CONTENT), run.stderr[-300:]


def test_child_reports_its_protections_and_cannot_reach_network_server_or_secrets(monkeypatch):
    monkeypatch.setenv("GLASSBOX_TEST_SECRET", "s3cret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    code = r"""
import encodings.idna, os, socket  # imported before the lock: the child may not read the stdlib after it
report(phase="ready", protections=lock_down())
reached = []
try:
    socket.create_connection(("127.0.0.1", ARGS["port"]), timeout=2).close()
    reached.append("network")
except OSError:
    pass
try:
    os.kill(ARGS["parent"], 0)
    reached.append("parent")
except OSError:
    pass
if "s3cret" in repr(dict(os.environ)):
    reached.append("secret")
report(ok=True, reached=reached, uid=os.getuid())
"""
    try:
        run = run_in_sandbox(code, b"", {"port": listener.getsockname()[1], "parent": os.getpid()}, timeout_s=10)
    finally:
        listener.close()
    assert run.ok and run.final["reached"] == [], run.final
    expected = {"empty-cwd", "net-namespace", "no-new-privs", "rlimit-fsize", "rlimit-nofile", "rlimit-core",
                "rlimit-as", "rlimit-cpu", "gpu-hidden", "minimal-env", "wall-timeout"}
    if IS_ROOT:
        expected.add("user-nobody")
        assert run.final["uid"] == 65534
    if _landlock_abi() >= 1:
        expected.add("landlock-fs")
    assert expected <= set(run.protections), sorted(expected - set(run.protections))


def test_zygote_children_cannot_forge_their_exit_and_a_dead_zygote_is_restarted():
    from explain.loading.sandbox_zygote import _ZYGOTES, get_zygote

    preload = "import json  # a cheap zygote for this test"
    forge = 'report(phase="ready", protections=lock_down())\nreport(exit=0)\nwhile True:\n    pass\n'
    run = run_in_sandbox(forge, b"", timeout_s=1, preload=preload)
    assert run.timed_out == "run" and run.returncode < 0  # the forged line was not taken for an exit
    zygote = _ZYGOTES[preload]  # the child came from a zygote
    assert zygote.alive()
    zygote.proc.kill()
    zygote.proc.wait()
    run = run_in_sandbox('report(phase="ready", protections=lock_down())\nreport(ok=True)\n', b"", preload=preload)
    assert run.ok and "rlimit-as" in run.protections
    assert get_zygote(preload, {}, str(ROOT)) is not zygote


# --------------------------------------------------------------------------
# bombs that are quiet at batch 1
# --------------------------------------------------------------------------
class MemoryBomb(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6] -> [B, 2]
        if x.size(0) > 1:
            y = torch.zeros(x.size(0) * 2_500_000_000)  # 20 GB of float32 at batch 2
            return x[:, :2] + y.sum()
        return x[:, :2]


class TimeBomb(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6] -> [B, 2]
        y = x[:, :2]
        if x.size(0) > 1:
            for _ in range(1 << 40):
                y = y + 1.0
        return y


def bomb_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    return buf.getvalue()


def test_bombs_are_quiet_at_batch_one():
    x = torch.zeros(1, 6)
    assert MemoryBomb()(x).shape == (1, 2) and TimeBomb()(x).shape == (1, 2)


def test_torchscript_memory_bomb_above_batch_one_is_refused(small_limits):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TooLarge, match="more memory than the loader allows at a batch of 2"):
        load_model(bomb_bytes(MemoryBomb()), filename="membomb.pt")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: this process stayed small


def test_torchscript_time_bomb_above_batch_one_is_refused(small_limits):
    with pytest.raises(UnsafeFile, match="did not finish within 4 s at a batch of 2"):
        load_model(bomb_bytes(TimeBomb()), filename="timebomb.pt")


def test_pt2_memory_bomb_above_batch_one_is_refused(small_limits, tmp_path):
    class OnesBomb(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6] -> [B, 2]
            y = torch.ones((x.shape[0] - 1) * 2_500_000_000)  # empty at batch 1, 10 GB at batch 2
            return x[:, :2] + y.sum()

    ep = torch.export.export(OnesBomb(), (torch.zeros(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "bomb.pt2"
    torch.export.save(ep, str(path), extra_files={SPEC_FILENAME: SPEC.to_json()})
    with pytest.raises(TooLarge, match="at a batch of 2"):
        load_model(path)


@pytest.mark.parametrize("bomb, message", [(MemoryBomb, "more memory"), (TimeBomb, "did not finish within 4 s")])
def test_cli_refuses_bombs_with_exit_3_and_one_line(tmp_path, bomb, message):
    model = tmp_path / "bomb.pt"
    model.write_bytes(bomb_bytes(bomb()))
    np.save(tmp_path / "x.npy", np.zeros((3, 6), np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "explain", "attribute", str(model), "--inputs", str(tmp_path / "x.npy"),
         "--method", "saliency", "--out", str(tmp_path / "out.npz")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **SMALL_LIMITS},
    )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "at a batch of 2" in lines[0], proc.stderr
    assert not (tmp_path / "out.npz").exists()
