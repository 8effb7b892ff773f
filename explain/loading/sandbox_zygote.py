"""A pre-started parent for sandbox children, so a probe does not pay for importing torch.

Starting Python and importing torch (and, for ``.pt2``, torch's export
machinery) costs seconds per child. A *zygote* is one ``python -I`` process,
started with the sandbox's minimal environment, that runs a trusted preload
(imports and a warm-up on trusted graphs) once and then forks one child per
request. Each child is a copy of the warmed-up zygote: it locks itself down
exactly as a fresh child does (`explain.loading.sandbox.PRELUDE`), but starts in
milliseconds. A forked child also has a single thread, so Landlock and a new
user namespace cover the whole child.

Protocol (per request): the parent sends the zygote, over a control socket, a
fresh socket and the write end of a stderr pipe (``SCM_RIGHTS``); the zygote
forks and writes ``{"pid": P}`` on the socket; the parent then sends the
program and its input on the socket (8-byte length + JSON header, then the
stdin bytes, then shuts down its write side); the child's fd 0 and 1 are that
socket (fd 1 becomes the report channel), fd 2 the pipe; when the child has
exited, the zygote writes ``{"exit": code}`` (negative: killed by a signal)
and closes the socket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import BinaryIO

ZYGOTE_CODE = r'''
import io, json, os, select, socket, sys, traceback
control = socket.socket(fileno=int(sys.argv[1]))
sys.path.insert(0, sys.argv[3])
exec(compile(sys.argv[2], "<preload>", "exec"), {"__name__": "__glassbox_preload__"})
socks = {}


def read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def run_child():
    n = int.from_bytes(read_exact(0, 8), "little")
    header = json.loads(read_exact(0, n))
    sys.argv = ["-c", header["argv1"]]
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "rb", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "wb", closefd=False), line_buffering=True)
    code = 0
    try:
        exec(compile(header["code"], "<sandbox>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return code


def reap():
    while socks:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = socks.pop(pid, None)
        if sock is not None:
            try:
                sock.sendall((json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n").encode())
            except OSError:
                pass
            sock.close()


while True:
    ready, _, _ = select.select([control], [], [], 0.1)
    reap()
    if not ready:
        continue
    try:
        msg, fds, _, _ = socket.recv_fds(control, 16, 2)
    except OSError:
        break
    if not msg:
        break  # the parent went away
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        continue
    sock, err = socket.socket(fileno=fds[0]), fds[1]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            control.close()
            for other in socks.values():
                other.close()
            os.setsid()
            os.dup2(sock.fileno(), 0)
            os.dup2(sock.fileno(), 1)
            os.dup2(err, 2)
            sock.close()
            os.close(err)
            code = run_child()
        finally:
            os._exit(code)
    os.close(err)
    socks[pid] = sock
    try:
        sock.sendall((json.dumps({"pid": pid}) + "\n").encode())
    except OSError:
        pass
for pid in list(socks):  # the server went away: so do the children it left (each leads its session)
    try:
        os.killpg(pid, 9)
    except OSError:
        pass
'''


class Zygote:
    """One running zygote process (see the module docstring).

    Args:
        preload: trusted Python run once in the zygote before it serves.
        env: the zygote's whole environment.
        root: the directory put first on the zygote's ``sys.path``.
    """

    def __init__(self, preload: str, env: dict[str, str], root: str):
        self._control, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", ZYGOTE_CODE, str(theirs.fileno()), preload, root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, cwd="/", start_new_session=True, pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, startup_s: float) -> ZygoteChild | None:
        """Fork a child; None when the zygote does not answer within ``startup_s``."""
        sock, theirs = socket.socketpair()
        err_r, err_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._control, [b"c"], [theirs.fileno(), err_w])
        except OSError:
            sock.close()
            os.close(err_r)
            return None
        finally:
            theirs.close()
            os.close(err_w)
        sock.settimeout(startup_s)  # the first request waits for the preload
        reports = sock.makefile("rb")
        try:
            first = json.loads(reports.readline() or b"{}")
        except (OSError, ValueError):
            first = {}
        sock.settimeout(None)
        if not isinstance(first, dict) or not isinstance(first.get("pid"), int):
            reports.close()
            sock.close()
            os.close(err_r)
            return None
        return ZygoteChild(first["pid"], sock, reports, os.fdopen(err_r, "rb"))

    def stop(self) -> None:
        """Close the control socket (the zygote exits) and reap it."""
        self._control.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ZygoteChild:
    """A forked child, as `explain.loading.sandbox` supervises it.

    Attributes:
        pid: the child's pid (it leads its own session).
        reports: its report channel (lines of JSON); the zygote's ``exit`` line
            is taken out by `take_exit`.
        errors: its stderr.
    """

    def __init__(self, pid: int, sock: socket.socket, reports: BinaryIO, errors: BinaryIO):
        self.pid = pid
        self._sock = sock
        self.reports = reports
        self.errors = errors
        self._exit: int | None = None
        self._done = threading.Event()

    def send(self, program: str, argv1: str, pieces: list[bytes]) -> None:
        """The program, its ``sys.argv[1]`` and its stdin, then EOF."""
        header = json.dumps({"code": program, "argv1": argv1}).encode()
        try:
            self._sock.sendall(len(header).to_bytes(8, "little") + header)
            for piece in pieces:
                self._sock.sendall(piece)
        except OSError:
            pass
        finally:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def take_exit(self, item: dict) -> bool:
        """Record the zygote's ``exit`` line; False when the child is still alive (a forged line)."""
        try:
            os.kill(self.pid, 0)  # not yet reaped, so the pid cannot have been reused
            return False
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        self._exit = int(item["exit"])
        self._done.set()
        return True

    def closed(self) -> None:
        """The report channel ended: the zygote wrote the exit line (or died)."""
        self._done.set()

    def poll(self) -> int | None:
        return self._exit if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when the child still runs after ``timeout``."""
        if not self._done.wait(timeout):
            return None
        return self._exit if self._exit is not None else -signal.SIGKILL

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        for stream in (self.reports, self.errors, self._sock):
            try:
                stream.close()
            except OSError:
                pass


_ZYGOTES: dict[str, Zygote] = {}
_ZYGOTES_LOCK = threading.Lock()


#: Trusted code a zygote runs once before it forks model processes: the imports
#: every request may need, and one pass over tiny trusted graphs of both formats.
MODEL_PRELOAD = r"""
import encodings.cp437, io
import torch
torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
from explain.loading import model_host as _mp
_mp.warm_up()
"""
#: The preload of model processes of Hugging Face models: the same, and transformers warmed up too.
HF_PRELOAD = MODEL_PRELOAD + """
_mp.warm_up_huggingface()
"""

def get_zygote(preload: str, env: dict[str, str], root: str) -> Zygote | None:
    """The running zygote for ``preload`` (started, or restarted, on demand); None if it cannot start."""
    with _ZYGOTES_LOCK:
        zygote = _ZYGOTES.get(preload)
        if zygote is not None and zygote.alive():
            return zygote
        try:
            zygote = Zygote(preload, env, root)
        except OSError:
            return None
        _ZYGOTES[preload] = zygote
        return zygote
