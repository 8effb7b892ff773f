"""The zygote a command-line call shares with the calls after it (issue 21, "No waiting").

`explain.loading.sandbox_zygote.SharedZygote`: a second process forks from the zygote the first one
started; a sandboxed child can reach its socket but gets no fork from it (with or without the
``nobody`` switch); idle, or replaced by a zygote for newer code, it ends; and ``python -m explain``
on a ``.pt2`` leaves one behind that the next call uses.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from explain.loading import sandbox_zygote
from explain.loading.sandbox import child_env, run_in_sandbox

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = "import json  # a cheap shared zygote for these tests"

#: prints the pid of the zygote a sandboxed child was forked from (its parent), sharing zygotes
SHARER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from explain.loading import sandbox_zygote
from explain.loading.sandbox import run_in_sandbox
sandbox_zygote.share_zygotes(float(sys.argv[3]))
run = run_in_sandbox('import os\\nreport(phase="ready", protections=lock_down())\\nreport(ok=True, ppid=os.getppid())\\n',
                     b"", preload=sys.argv[2])
print(json.dumps({"ok": run.ok, "ppid": run.final.get("ppid")}))
"""

#: a sandboxed child that asks the shared zygote at ARGS["path"] for a fork, as its caller does
KNOCK = r'''
import json, os, socket
report(phase="ready", protections=lock_down())
try:
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(ARGS["path"])
    mine, theirs = socket.socketpair()
    r, w = os.pipe()
    socket.send_fds(control, [b"c"], [theirs.fileno(), w])
    mine.settimeout(5)
    line = mine.makefile("rb").readline()
    report(ok=True, connected=True, reply=line.decode(errors="replace"))
except OSError as exc:
    report(ok=True, connected=False, error=str(exc))
'''


@pytest.fixture
def tmpdir_short(monkeypatch):
    """A short private TMPDIR (unix socket paths are short) for this test's shared zygotes."""
    folder = tempfile.mkdtemp(prefix="gbz", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", folder)
    yield folder
    for path in Path(folder).glob("glassbox-zygotes-*/*.sock"):
        path.unlink()  # its zygote ends within a second
    shutil.rmtree(folder, ignore_errors=True)


def _share(folder: str, idle_s: float = 30) -> dict:
    env = {**os.environ, "TMPDIR": folder}
    proc = subprocess.run([sys.executable, "-c", SHARER, str(ROOT), PRELOAD, str(idle_s)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sockets(folder: str) -> list[Path]:
    return sorted(Path(folder).glob("glassbox-zygotes-*/*.sock"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ", 1)[1].split()[0] != "Z"


def test_a_later_process_forks_from_the_zygote_the_first_one_left(tmpdir_short):
    first, second = _share(tmpdir_short), _share(tmpdir_short)
    assert first["ok"] and second["ok"]
    assert first["ppid"] == second["ppid"]  # one zygote, outliving the process that started it
    (sock,) = _sockets(tmpdir_short)
    folder = sock.parent
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.geteuid()
    assert _alive(first["ppid"])


def test_a_temporary_folder_with_a_long_name_still_shares(monkeypatch):
    """Up to unix sockets' 108 bytes (the benchmark's TMPDIR is /tmp/glassbox-latency-XXXXXXXX)."""
    folder = tempfile.mkdtemp(prefix="glassbox-latency-", dir="/tmp")
    try:
        first, second = _share(folder), _share(folder)
        assert first["ok"] and first["ppid"] == second["ppid"]
    finally:
        for sock in _sockets(folder):
            sock.unlink()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("skip", [(), ("user-nobody",)], ids=["locked", "same-uid"])
def test_a_sandboxed_child_gets_no_fork_from_the_shared_zygote(tmpdir_short, monkeypatch, skip):
    """Its caller's uid (``user-nobody`` skipped), yet no_new_privs and its own namespaces: refused."""
    sandbox_zygote.share_zygotes(30)
    try:
        assert run_in_sandbox('report(phase="ready", protections=lock_down())\nreport(ok=True)\n', b"",
                              preload=PRELOAD).ok
        (sock,) = _sockets(tmpdir_short)
        run = run_in_sandbox(KNOCK, b"", {"path": str(sock)}, preload=PRELOAD, skip=skip)
    finally:
        sandbox_zygote.share_zygotes(0)
        sandbox_zygote._SHARED.pop(PRELOAD).stop()
    assert run.ok, run.stderr[-2000:]
    assert run.final.get("reply", "") == "", run.final  # closed without a {"pid": ...}: no child forked for it


def test_an_idle_shared_zygote_ends_and_removes_its_socket(tmpdir_short):
    zygote = _share(tmpdir_short, idle_s=1)["ppid"]
    deadline = time.monotonic() + 30
    while _alive(zygote) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(zygote)
    assert _sockets(tmpdir_short) == []


def test_a_zygote_for_newer_code_retires_the_old_one(tmpdir_short, monkeypatch):
    old = _share(tmpdir_short)["ppid"]
    (old_sock,) = _sockets(tmpdir_short)
    stamp = sandbox_zygote.code_stamp
    monkeypatch.setattr(sandbox_zygote, "code_stamp", lambda root: [*stamp(root), "edited"])
    path = sandbox_zygote.shared_path(PRELOAD, child_env(tempfile.gettempdir()), str(ROOT))
    assert path is not None and Path(path).name.split("-")[0] == old_sock.name.split("-")[0] and Path(path) != old_sock
    sandbox_zygote._retire_others(path)  # what a new zygote's start does
    deadline = time.monotonic() + 30
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(old)


def test_the_cli_leaves_a_warm_zygote_for_the_next_call(tmp_path, tmpdir_short):
    """Two ``attribute`` calls on the cancer .pt2: the second forks its model process from the zygote
    the first one started (its socket and pid unchanged), and both give the same attributions.
    (``tmp_path`` comes first: made inside ``tmpdir_short``, pytest's base folder would go with it.)"""
    samples = ROOT / "sample_models" / "cancer"
    env = {**os.environ, "TMPDIR": tmpdir_short, "GLASSBOX_HOME": str(tmp_path / "home")}
    env.pop("GLASSBOX_DATABASE_URL", None)
    env.pop("GLASSBOX_EXTERNAL_WORKER", None)
    outs = []
    for i in range(2):
        out = tmp_path / f"attr{i}.npz"
        proc = subprocess.run([sys.executable, "-m", "explain", "attribute", str(samples / "model.pt2"), "--inputs",
                               str(samples / "samples.npz"), "--method", "saliency", "--out", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
        if i == 0:
            (sock,) = _sockets(tmpdir_short)
            zygotes = _zygote_pids(sock)
    assert _sockets(tmpdir_short) == [sock] and _zygote_pids(sock) == zygotes != []
    import numpy as np

    with np.load(outs[0]) as a, np.load(outs[1]) as b:
        assert np.array_equal(a["values"], b["values"])


def _zygote_pids(sock: Path) -> list[int]:
    """The processes whose command line names this socket (the zygote listening on it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(sock).encode() in cmdline:
                found.append(int(entry))
    return found
