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

A server keeps its own zygotes (`Zygote`, one control socket each, gone with
the server). A command-line call shares one with the user's later calls
(`share_zygotes`, `SharedZygote`): the same program, listening on a unix
socket in a private folder, admitting only callers that are no sandboxed
process, used only by callers that checked it (`explain.loading.zygote_identity`),
and ending when idle or replaced by a zygote for newer code.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from typing import BinaryIO

from explain.loading.zygote_identity import NotTheZygote, code_stamp, connect_to_zygote, inherited, retire_others

#: Seconds a new shared zygote may take to start Python and listen on its socket (its preload comes after).
LISTEN_S = 30.0

ZYGOTE_CODE = r'''
import io, json, os, select, socket, sys, time, traceback
shared = len(sys.argv) > 4  # a bound socket (argv 4-6: idle seconds, its path and inode), else one control
listener = socket.socket(fileno=int(sys.argv[1])) if shared else None
controls = {} if shared else {socket.socket(fileno=int(sys.argv[1])): set()}  # control -> its children's pids
sys.path.insert(0, sys.argv[3])
from explain.loading.zygote_identity import CodeWatch, admitted, imported_files
if shared:
    listener.listen(64)  # here, not in the caller that started it: SO_PEERCRED names this process to callers
    os.write(1, b"listening\n")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # the caller's pipe, closed by now
    os.close(null)
exec(compile(sys.argv[2], "<preload>", "exec"), {"__name__": "__glassbox_preload__"})
socks = {}
watch = CodeWatch(imported_files()) if shared else None  # the preload's code: edited since, this zygote is stale


def still_mine():
    """The shared socket's path still names this zygote's socket (a newer zygote did not replace it)."""
    try:
        return os.stat(sys.argv[5]).st_ino == int(sys.argv[6])
    except OSError:
        return False


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


def drop(control):
    """A caller went away: so do the children it started (each leads its session)."""
    for pid in controls.pop(control, ()):
        if pid in socks:
            try:
                os.killpg(pid, 9)
            except OSError:
                pass
    control.close()


idle_since, checked = time.monotonic(), 0.0
while controls or shared:
    ready, _, _ = select.select([*controls, *([listener] if listener else [])], [], [], 0.1)
    reap()
    now = time.monotonic()
    if shared and not ready:
        if controls or socks:
            idle_since = now
        elif now - idle_since > float(sys.argv[4]):
            break
        if now - checked > 1.0:
            checked = now
            if not still_mine():
                listener.close()  # replaced or removed: serve the callers connected, take no new one
                listener, shared = None, False
        continue
    for control in ready:
        if control is listener:
            conn, _ = listener.accept()
            if not admitted(conn):
                conn.close()
            elif not watch.changed():
                controls[conn] = set()
            else:  # a module it imported was edited since: retire (the caller starts a new zygote)
                conn.close()
                if still_mine():
                    os.unlink(sys.argv[5])
                listener.close()
                listener, shared = None, False
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(control, 16, 2)
        except OSError:
            msg, fds = b"", []
        if not msg:
            drop(control)  # the caller went away
            continue
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        sock, err = socket.socket(fileno=fds[0]), fds[1]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for other in [*controls, *socks.values(), *(x for x in (listener, watch) if x is not None)]:
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
        controls[control].add(pid)
        try:
            sock.sendall((json.dumps({"pid": pid}) + "\n").encode())
        except OSError:
            pass
if listener is not None and still_mine():
    os.unlink(sys.argv[5])  # idle: the next call starts a new zygote
for pid in list(socks):  # the callers went away: so do the children they left (each leads its session)
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


_ZYGOTES: dict[str, Zygote] = {}  # preload -> this process's own zygote
_SHARED: dict[str, Zygote] = {}  # preload -> the connection to a shared one (`share_zygotes`)
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
import encodings.unicode_escape, jinja2.sandbox  # a causal LM's chat template renders here (generation.chat)
"""

#: Idle seconds of the zygotes this process shares with later processes (`share_zygotes`); 0: none.
_SHARE_IDLE_S = 0.0


def share_zygotes(idle_s: float) -> None:
    """From now on `get_zygote` uses a zygote shared with later processes of this user (`SharedZygote`),
    kept up ``idle_s`` seconds after its last caller; 0 goes back to zygotes of this process only.

    A command-line call sets it: every ``python -m explain`` call would otherwise import torch and
    warm a zygote up anew. The private zygotes stay for the server (it lives long)."""
    global _SHARE_IDLE_S
    _SHARE_IDLE_S = max(0.0, float(idle_s))


def get_zygote(preload: str, env: dict[str, str], root: str) -> Zygote | None:
    """The running zygote for ``preload`` (started, or restarted, on demand); None if it cannot start.

    With `share_zygotes` on, the one shared with other processes (connected to, or started), else
    (or where none can be shared) one of this process's own."""
    with _ZYGOTES_LOCK:
        if _SHARE_IDLE_S > 0:
            zygote = _SHARED.get(preload)
            if zygote is not None and zygote.alive():
                return zygote
            zygote = SharedZygote.connect(preload, env, root, _SHARE_IDLE_S)
            if zygote is not None:
                _SHARED[preload] = zygote
                return zygote
        zygote = _ZYGOTES.get(preload)
        if zygote is not None and zygote.alive():
            return zygote
        try:
            zygote = Zygote(preload, env, root)
        except OSError:
            return None
        _ZYGOTES[preload] = zygote
        return zygote


class SharedZygote(Zygote):
    """A zygote that outlives the process that started it, reached through a unix socket, so the
    next command-line call forks its model process from a zygote already warm.

    Where: ``$TMPDIR/glassbox-zygotes-<uid>/<what>-<code>.sock``, the folder this user's alone
    (``0700``, checked). ``what`` digests the interpreter, the preload, the environment and the
    root; ``code`` the Python version, the zygote's code, and the size and time of every source
    file of Glassbox and of each site-packages folder (`code_stamp`). A change of any gives another
    path, so a zygote never serves code older than the caller's; a zygote started for newer code
    removes the older one's socket (`retire_others`), which then ends once its callers are done.

    Who: the zygote admits a caller of the same uid in the same user and network namespaces
    without ``no_new_privs`` (`zygote_identity.admitted`): every sandboxed child sets
    ``no_new_privs`` and leaves those namespaces where it can, so no child can ask it for a fork.
    A process that runs with ``no_new_privs`` itself (which would blur that line) shares none. A
    caller sends nothing before it found the listening process to be this zygote (`connect_to_zygote`),
    so a socket a sandboxed child put in its place is refused. An edit inside a package the zygote
    imported changes no path: it takes no new caller then, and `spawn` starts a zygote anew.

    The zygote holds no user data: each request forks a fresh child that locks itself down and
    is sent its program and the model's bytes over its own socket, as with a private zygote; the
    children of a caller that goes away are killed. Unused for ``idle_s`` seconds, or once a newer
    zygote took its path, it ends.
    """

    def __init__(self, control: socket.socket, args: tuple):  # noqa: D107 - see `connect`
        self._control = control
        self._args = args  # `connect`'s, for a reconnection
        self.proc = None
        self._lock = threading.Lock()
        self._reconnecting = threading.Lock()

    @classmethod
    def connect(cls, preload: str, env: dict[str, str], root: str, idle_s: float) -> SharedZygote | None:
        """Connect to the shared zygote for these arguments, starting it when none runs; None where
        none can be shared (no private folder, ``no_new_privs``, no unix sockets) or the process
        listening at its path is no such zygote (`NotTheZygote`, logged)."""
        path = shared_path(preload, env, root)
        if path is None:
            return None
        args = (preload, env, root, idle_s)
        try:
            return cls(connect_to_zygote(path, _shared_argv(preload, root, path)), args)
        except NotTheZygote:
            return None
        except OSError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = os.path.join(os.path.dirname(path), f".{os.getpid()}-{os.urandom(4).hex()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            listener.bind(staging)  # bound here, listened on by the zygote (`zygote_refusal` needs its pid)
            argv = _shared_argv(preload, root, path, str(listener.fileno()), repr(float(idle_s)),
                                str(os.stat(staging).st_ino))
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, cwd="/", start_new_session=True, pass_fds=(listener.fileno(),),
            )
            proc.returncode = 0  # never waited for: it outlives this process (no "still running" warning)
            with proc.stdout:
                if not select.select([proc.stdout], [], [], LISTEN_S)[0] or proc.stdout.readline() != b"listening\n":
                    os.killpg(proc.pid, signal.SIGKILL)
                    raise OSError("the shared zygote did not start")
            os.replace(staging, path)  # atomic: a racing caller's zygote, or a dead one's socket, is replaced
            retire_others(path)
            return cls(connect_to_zygote(path, _shared_argv(preload, root, path)), args)
        except (OSError, NotTheZygote):
            with contextlib.suppress(OSError):
                os.unlink(staging)
            return None
        finally:
            listener.close()

    def spawn(self, startup_s: float) -> ZygoteChild | None:
        """As `Zygote.spawn`; a zygote that closed this connection (it retired: a module it imported
        was edited since; or it ended) is replaced once by a new connection (`connect`)."""
        child = super().spawn(startup_s)
        if child is not None or self.alive():
            return child
        with self._reconnecting:
            if not self.alive():
                fresh = SharedZygote.connect(*self._args)
                if fresh is None:
                    return None
                self._control.close()
                self._control = fresh._control
        return super().spawn(startup_s)

    def alive(self) -> bool:
        """False once the zygote closed this connection (it never writes on it)."""
        try:
            return self._control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Leave the zygote to later callers (it ends this caller's children and, idle, itself)."""
        self._control.close()


def _shared_argv(preload: str, root: str, path: str, fd: str | None = None, idle_s: str | None = None,
                 inode: str | None = None) -> list[str | None]:
    """A shared zygote's command line (with None: what `zygote_refusal` expects, any fd, idle time, inode)."""
    return [sys.executable, "-I", "-c", ZYGOTE_CODE, fd, preload, root, idle_s, path, inode]


def shared_path(preload: str, env: dict[str, str], root: str) -> str | None:
    """The shared zygote's socket path for these arguments (`SharedZygote`); None where this user
    has no private folder for it or this process runs with ``no_new_privs``."""
    try:
        with open("/proc/self/status") as fh:
            status = fh.read().splitlines()
        if any(line.split()[1:2] != ["0"] for line in status if line.startswith("NoNewPrivs:")):
            return None
        context = inherited(status)
        folder = os.path.join(tempfile.gettempdir(), f"glassbox-zygotes-{os.geteuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
    except OSError:
        return None
    from explain.digest import digest_bytes

    stable = digest_bytes(json.dumps([sys.executable, preload, sorted(env.items()), root, context]).encode())
    code = digest_bytes(json.dumps([sys.version, ZYGOTE_CODE, code_stamp(root)]).encode())
    path = os.path.join(folder, f"{stable[:20]}-{code[:20]}.sock")  # `retire_others` reads the stable part
    return path if len(path.encode()) < 108 else None  # a unix socket path's limit
