"""The zygote a command-line call shares with the calls after it (issue 21, "No waiting").

`explain.loading.sandbox_zygote.SharedZygote`: a second process forks from the zygote the first one
started; a sandboxed child can reach its socket but gets no fork from it (with or without the
``nobody`` switch); a socket put in its place by another process (a sandboxed child where Landlock is
missing, or one that is not the zygote program) is refused before a byte is sent to it; idle, replaced
by a zygote for newer code, or after an edit inside a package it imported, it ends; and
``python -m explain`` on a ``.pt2`` leaves one behind that the next call uses.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from explain.loading import sandbox_zygote
from explain.loading.sandbox import child_env, run_in_sandbox
from explain.loading.zygote_identity import CodeWatch, peer, retire_others

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
    theirs.close()  # the zygote's copy, if it took one, is then the only one: closed, the reply ends
    os.close(w)
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
    retire_others(path)  # what a new zygote's start does
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


def test_the_zygote_listens_itself_so_its_callers_see_its_pid(tmpdir_short):
    """``SO_PEERCRED`` names the process that called ``listen()``: the zygote, not the (gone) call that started it."""
    started = _share(tmpdir_short)
    (sock,) = _sockets(tmpdir_short)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        conn.connect(str(sock))
        assert peer(conn) == (started["ppid"], os.geteuid())
    assert _zygote_pids(sock) == [started["ppid"]]


#: binds its own socket at argv[1], in place of the zygote's, and appends to argv[2] what each caller sent it
IMPOSTOR = r'''
import ctypes, json, os, socket, sys
if sys.argv[3] == "sandboxed":  # a sandbox child on a kernel without Landlock: no_new_privs, the folder writable
    assert ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
os.unlink(sys.argv[1])
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(2)  # a caller that sent something and waits for a reply gets none
    got, fds = b"", []
    try:
        while True:
            data, more, _, _ = socket.recv_fds(conn, 65536, 4)
            got, fds = got + data, fds + more
            if not data:
                break
    except OSError:
        pass
    with open(sys.argv[2], "a") as fh:
        fh.write(json.dumps({"bytes": len(got), "fds": len(fds)}) + "\n")
    for fd in fds:
        os.close(fd)
    conn.close()
'''
SUM = 'import os\nreport(phase="ready", protections=lock_down())\nreport(ok=True, total=sum(DATA), ppid=os.getppid())\n'


@pytest.mark.parametrize("kind", ["sandboxed", "plain"])
def test_a_socket_put_in_the_zygotes_place_gets_nothing_and_the_call_runs_on_its_own(tmp_path, tmpdir_short,
                                                                                     caplog, kind):
    """A process of this uid replaced the shared zygote's socket with its own: one with no_new_privs (a
    sandboxed child where Landlock is missing), or a plain one that is not the zygote program. The next
    caller connects, reads its peer, refuses it before sending a byte or a descriptor, says why in one
    logged line, and runs on a zygote of its own, with the right answer."""
    preload = f"import json  # impostor test, {kind}"
    sandbox_zygote.share_zygotes(30)
    impostor = None
    try:
        assert run_in_sandbox(SUM, b"", preload=preload).ok  # the genuine shared zygote, then our call ends
        sandbox_zygote._SHARED.pop(preload).stop()
        (sock,) = _sockets(tmpdir_short)
        record = tmp_path / "received.jsonl"
        impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, str(sock), str(record), kind],
                                    stdout=subprocess.PIPE, text=True)
        assert impostor.stdout.readline() == "listening\n"
        with caplog.at_level("WARNING", logger="glassbox.zygote"):
            run = run_in_sandbox(SUM, bytes(range(10)), preload=preload)
    finally:
        sandbox_zygote.share_zygotes(0)
        private, shared = sandbox_zygote._ZYGOTES.pop(preload, None), sandbox_zygote._SHARED.pop(preload, None)
        for zygote in (private, shared):
            if zygote is not None:
                zygote.stop()
        if impostor is not None:
            impostor.kill()
            impostor.wait()
    received = [json.loads(x) for x in record.read_text().splitlines()]
    assert received == [{"bytes": 0, "fds": 0}]  # connected to, then left: nothing sent
    assert shared is None and private is not None and run.ok, run.stderr[-2000:]
    assert run.final["total"] == 45 and run.final["ppid"] == private.proc.pid  # forked from its own zygote
    reason = "is a sandboxed process" if kind == "sandboxed" else "does not run the zygote program"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "glassbox.zygote"]
    assert reason in line and f"pid {impostor.pid}" in line and "\n" not in line, line


#: how many inotify instances a process holds (the zygote's `CodeWatch`)
_INOTIFY_FDS = """
def _inotify_fds(pid):
    import os
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # the folder's own descriptor, closed by now
    return links.count("anon_inode:inotify")
"""


def test_an_edit_inside_a_package_the_zygote_imported_gives_the_next_call_a_new_zygote(tmp_path, tmpdir_short):
    """A package on ``sys.path`` the preload imported is edited (the key, Glassbox's sources and the
    site-packages folders, does not change): the zygote takes no new caller, and the next call forks
    from a new zygote importing the edited code; unedited, calls keep sharing one."""
    package = tmp_path / "gbstale"
    package.mkdir()
    (package / "__init__.py").write_text("from gbstale.values import VALUE\n")
    (package / "values.py").write_text("VALUE = 1\n")
    preload = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport gbstale"
    code = ('import os, gbstale\nreport(phase="ready", protections=lock_down())\n'
            'report(ok=True, value=gbstale.VALUE, ppid=os.getppid(), watches=_inotify_fds("self"))\n')
    code = f"{_INOTIFY_FDS}\n{code}"

    def call() -> dict:  # as a new CLI call: a connection of its own
        sandbox_zygote.share_zygotes(30)
        try:
            run = run_in_sandbox(code, b"", preload=preload)
        finally:
            sandbox_zygote.share_zygotes(0)
            sandbox_zygote._SHARED.pop(preload).stop()
        assert run.ok, run.stderr[-2000:]
        return run.final

    first, second = call(), call()
    assert first["value"] == second["value"] == 1 and first["ppid"] == second["ppid"]
    namespace: dict = {}
    exec(_INOTIFY_FDS, namespace)
    assert namespace["_inotify_fds"](first["ppid"]) == 1 and first["watches"] == 0  # the zygote's, closed in a fork
    (package / "values.py").write_text("VALUE = 22\n")
    third = call()
    assert third["value"] == 22 and third["ppid"] != first["ppid"]
    assert _zygote_pids(_sockets(tmpdir_short)[0]) == [third["ppid"]]
    deadline = time.monotonic() + 30
    while _alive(first["ppid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(first["ppid"])  # retired: its only caller was done


def _no_inotify(self):
    raise OSError("no inotify instance left")


@pytest.mark.parametrize("edit", ["written", "replaced"])
@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "stat"])
def test_a_code_watch_sees_an_edit_of_a_watched_file_and_nothing_else(tmp_path, monkeypatch, inotify, edit):
    """Reading a watched file, or writing another file or a ``__pycache__`` beside it, is no change; writing it,
    or an editor's save (a new file renamed over it), is; with inotify or, where it is out, by restating."""
    if not inotify:
        monkeypatch.setattr(CodeWatch, "_watch", _no_inotify)
    watched, other = tmp_path / "values.py", tmp_path / "other.py"
    watched.write_text("VALUE = 1\n")
    other.write_text("")
    watch = CodeWatch([str(watched)])
    try:
        assert (watch._fd >= 0) == inotify
        (tmp_path / "__pycache__").mkdir()
        (tmp_path / "__pycache__" / "values.cpython-311.pyc").write_bytes(b"\0")
        other.write_text("OTHER = 2\n")
        assert watched.read_text() == "VALUE = 1\n" and not watch.changed()  # read (imported again): no change
        if edit == "written":
            watched.write_text("VALUE = 22\n")
        else:
            (tmp_path / "values.py.new").write_text("VALUE = 22\n")
            os.replace(tmp_path / "values.py.new", watched)
        assert watch.changed() and watch.changed()  # and it stays so
    finally:
        watch.close()
