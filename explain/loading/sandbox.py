"""Run code on untrusted bytes in a locked-down, short-lived child process.

`run_in_sandbox` runs ``PRELUDE + code`` with the bytes on stdin, in a child
forked from a warmed-up zygote (`explain.loading.sandbox_zygote`, when the caller
gives a preload) or in a fresh ``python -I``. The child's program has three
parts:

1. `PRELUDE` (always first): reads the bytes into ``DATA`` (and trusted
   warm-up bytes, if any, into ``WARMUP``), the settings into
   ``SETTINGS`` / ``ARGS``, keeps the original stdout as a private report
   channel (``report(**fields)`` writes one JSON line to it) and points fd 1 at
   stderr, so whatever the model prints can never pass for a report;
2. the caller's code, which imports what it needs (importing reads files;
   after ``lock_down`` the child may no longer read the Python installation,
   e.g. one under ``/root``, so lazy imports are best triggered before, by
   working on ``WARMUP``) and then calls ``lock_down()``;
3. ``lock_down()`` applies, best effort, every protection below and returns
   the names of those that took effect; the caller reports them with
   ``report(phase="ready", protections=...)``.

Protections (Linux; names as reported):

- ``empty-cwd``: the working directory is a fresh empty temporary directory
  (root-owned ``0700`` when the child then becomes ``nobody``);
- ``net-namespace``: ``unshare(CLONE_NEWNET)`` (as root) or
  ``CLONE_NEWUSER|CLONE_NEWNET`` (otherwise): no network interface but a
  down loopback;
- ``user-nobody``: as root, ``setgroups([])`` and ``setgid``/``setuid`` to
  65534, so root-owned files cannot be written;
- ``no-new-privs``: ``prctl(PR_SET_NO_NEW_PRIVS)``;
- ``landlock-fs`` / ``landlock-net`` / ``landlock-scope``: a Landlock ruleset
  with no rules that forbids, everywhere, opening files for writing, creating,
  removing, renaming, linking or truncating them (``fs``), TCP bind/connect
  (``net``, ABI 4+) and signalling processes outside the sandbox or reaching
  abstract unix sockets (``scope``, ABI 6+). Reading stays allowed;
- ``rlimit-fsize``: ``RLIMIT_FSIZE`` 0 with ``SIGXFSZ`` ignored, so any write
  to a regular file fails with ``EFBIG``;
- ``rlimit-nofile``, ``rlimit-core``: few new file descriptors, no core dumps;
- ``rlimit-as`` / ``rlimit-cpu``: address space and CPU seconds on top of what
  the imports used;

and, from the parent: GPUs hidden (``CUDA_VISIBLE_DEVICES=""`` and friends), a
minimal environment (no secrets of the server's), a new session (the whole
process group is killed on timeout), a wall-clock limit counted from the
child's ``ready`` report (the imports get `STARTUP_S` of their own), and
bounded reading of its output.

Not covered: in a *fresh* child, a thread that existed before ``lock_down``
(torch starts one at import) is not under Landlock (``landlock_restrict_self``
binds the calling thread and threads created after it; a forked child has
one thread only); reads are allowed (the child can read what ``nobody`` may
read, and its report, e.g. an error message, is its way out); the child may
use CPU and memory up to its limits; every protection is best effort (a
kernel without Landlock or namespaces, a server that is not root) and the
names applied are reported rather than required.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from explain import config

#: Seconds the child may spend starting Python and importing torch before it reports ``ready``.
STARTUP_S = 180.0
#: Largest number of bytes kept of the child's report channel and of its stderr.
OUTPUT_BYTES = 1 << 20
STDERR_BYTES = 16 << 10
NOFILE = 32
NOBODY = 65534
#: Environment variables passed to the child (anything else, secrets included, is dropped).
PASS_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "GLASSBOX_MAX_UPLOAD_MB")
ROOT = str(Path(__file__).resolve().parents[2])

PRELUDE = r'''
import json as _json, os as _os, sys as _sys
_in = _sys.stdin.buffer
WARMUP = _in.read(int.from_bytes(_in.read(8), "little"))  # trusted warm-up bytes (length-prefixed)
DATA = _in.read(int.from_bytes(_in.read(8), "little"))  # then the untrusted bytes; stdin stays open
SETTINGS = _json.loads(_sys.argv[1])
ARGS = SETTINGS["args"]
LIMITS = {}  # what lock_down set: "as" (bytes of address space)
_REPORT = _os.fdopen(_os.dup(1), "w", buffering=1)
_os.dup2(2, 1)  # prints of the model go to stderr, never to the report channel
if SETTINGS.get("root"):
    _sys.path.insert(0, SETTINGS["root"])


def report(**fields):
    _REPORT.write(_json.dumps(fields) + "\n")
    _REPORT.flush()


def _vm(key):
    with open("/proc/self/status") as fh:
        return next((int(l.split()[1]) * 1024 for l in fh if l.startswith(key + ":")), 0)


def _landlock(libc, applied):
    import ctypes
    sys_create, sys_restrict = 444, 446  # the same numbers on x86_64 and aarch64
    abi = libc.syscall(sys_create, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return
    fs = (1 << 1) | sum(1 << b for b in range(4, 13))  # write, remove, make*
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net = 3 if abi >= 4 else 0  # bind, connect TCP
    scope = 3 if abi >= 6 else 0  # abstract unix sockets, signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scope)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(sys_create, ctypes.byref(attr), size, 0)
    if fd < 0:
        return
    try:
        granted = _grant_devices(libc, fd, abi)
        if libc.syscall(sys_restrict, fd, 0) == 0:
            applied += [f"landlock-device:{path}" for path in granted]
            applied += ["landlock-fs"] + (["landlock-net"] if net else []) + (["landlock-scope"] if scope else [])
    finally:
        _os.close(fd)


def _grant_devices(libc, ruleset, abi):
    """Let the child open its device files (SETTINGS["devices"], e.g. its GPU's) for writing and ioctls."""
    import ctypes

    class _PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    granted = []
    for path in SETTINGS.get("devices") or ():
        try:
            pfd = _os.open(path, _os.O_PATH | _os.O_CLOEXEC)
        except OSError:
            continue
        try:
            rule = _PathBeneath((1 << 1) | (1 << 15 if abi >= 5 else 0), pfd)  # write, ioctl on devices
            if libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0) == 0:  # landlock_add_rule, PATH_BENEATH
                granted.append(path)
        finally:
            _os.close(pfd)
    return granted


def lock_down():
    """Apply every protection this kernel allows; return the names of those applied."""
    import ctypes, resource, signal
    skip = set(SETTINGS.get("skip", ()))
    applied = []
    cpu_used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    vm_size = _vm("VmSize")
    _os.chdir(SETTINGS["workdir"])
    applied.append("empty-cwd")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    root = _os.geteuid() == 0
    if "net-namespace" not in skip:
        flags = 0x40000000 if root else 0x40000000 | 0x10000000  # CLONE_NEWNET (| CLONE_NEWUSER)
        if libc.unshare(flags) == 0:
            applied.append("net-namespace")
    if root and "user-nobody" not in skip:
        try:
            _os.setgroups([])
            _os.setresgid(SETTINGS["nobody"], SETTINGS["nobody"], SETTINGS["nobody"])
            _os.setresuid(SETTINGS["nobody"], SETTINGS["nobody"], SETTINGS["nobody"])
            applied.append("user-nobody")
        except OSError:
            pass
    if libc.prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS
        applied.append("no-new-privs")
    if "landlock" not in skip:
        _landlock(libc, applied)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is an error, not a kill
    cpu = cpu_used + SETTINGS["cpu"]
    for name, lim, soft, hard in (
        ("rlimit-fsize", resource.RLIMIT_FSIZE, 0, 0),
        ("rlimit-nofile", resource.RLIMIT_NOFILE, SETTINGS["nofile"], SETTINGS["nofile"]),
        ("rlimit-core", resource.RLIMIT_CORE, 0, 0),
        ("rlimit-as", resource.RLIMIT_AS, vm_size + SETTINGS["memory"], vm_size + SETTINGS["memory"]),
        ("rlimit-cpu", resource.RLIMIT_CPU, int(cpu) + 1, int(cpu) + 2),
        *([("rlimit-data", resource.RLIMIT_DATA, _vm("VmData") + SETTINGS["memory"],
            _vm("VmData") + SETTINGS["memory"])] if SETTINGS.get("data_limit") else []),
        # no new process or thread: nothing can escape the kill of this one (its pools exist already)
        *([("rlimit-nproc", resource.RLIMIT_NPROC, 0, 0)] if SETTINGS.get("nproc") else []),
    ):
        if name in skip:
            continue
        try:
            resource.setrlimit(lim, (soft, hard))
            applied.append(name)
            LIMITS[name[7:]] = soft
        except (ValueError, OSError):
            pass
    return applied

'''


@dataclass
class SandboxRun:
    """What a sandboxed child did.

    Attributes:
        returncode: the exit status (negative: killed by that signal).
        reports: the JSON objects the child wrote to its report channel, in order.
        stderr: the last `STDERR_BYTES` of its stderr (model prints included).
        timed_out: ``startup`` or ``run`` when the parent killed it, else None.
        seconds: wall-clock seconds from start to exit.
        protections: the names ``lock_down`` applied (from the ``ready`` report)
            plus the parent's own (``gpu-hidden``, ``minimal-env``, ``wall-timeout``).
    """

    returncode: int
    reports: list[dict] = field(default_factory=list)
    stderr: str = ""
    timed_out: str | None = None
    seconds: float = 0.0
    protections: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict:
        """The last report that is not a progress line (``{}`` when none)."""
        return next((r for r in reversed(self.reports) if "ok" in r), {})

    @property
    def last_phase(self) -> dict:
        """The last progress report (``{}`` when none)."""
        return next((r for r in reversed(self.reports) if "phase" in r and "ok" not in r), {})

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.timed_out is None and bool(self.final.get("ok"))


def child_env(workdir: str) -> dict[str, str]:
    """The child's whole environment: a few harmless variables, GPUs hidden, one thread."""
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update(
        HOME=workdir, TMPDIR=workdir, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="", ROCR_VISIBLE_DEVICES="",
    )
    return env


def run_in_sandbox(
    code: str,
    data: bytes,
    args: dict | None = None,
    *,
    timeout_s: float | None = None,
    memory_bytes: int | None = None,
    skip: tuple[str, ...] = (),
    warmup: bytes | Callable[[], bytes] = b"",
    preload: str = "",
    devices: tuple[str, ...] = (),
) -> SandboxRun:
    """Run ``PRELUDE + code`` on ``data`` in a locked-down child and collect its reports.

    Args:
        code: the child's program after `PRELUDE`; it must call ``lock_down()``
            after its imports and then ``report(phase="ready", protections=...)``.
        data: the untrusted bytes (the child's ``DATA``).
        args: JSON-able arguments (the child's ``ARGS``).
        timeout_s: wall-clock seconds after ``ready`` (default
            `explain.config.sandbox_timeout_s`); also the CPU-seconds budget.
        memory_bytes: address space the child may add after its imports
            (default `explain.config.sandbox_memory_bytes`).
        skip: protection names ``lock_down`` leaves out (tests use it to check
            each layer alone).
        warmup: trusted bytes (or a function making them) a fresh child may
            work on before ``lock_down`` (``WARMUP``); not sent to a zygote's
            child, which the preload warmed up already.
        devices: device files the child may open for writing and ioctls despite Landlock (a GPU's).
        preload: trusted code for a zygote (`explain.loading.sandbox_zygote`): when
            given and `explain.config.sandbox_zygote` allows it, the child is
            forked from a zygote that ran it once, else started fresh.

    Returns:
        The `SandboxRun`; the caller decides what a failure means.
    """
    timeout = config.sandbox_timeout_s() if timeout_s is None else float(timeout_s)
    memory = config.sandbox_memory_bytes() if memory_bytes is None else int(memory_bytes)
    workdir = tempfile.mkdtemp(prefix="glassbox-sandbox-")
    settings = json.dumps({
        "workdir": workdir, "memory": memory, "cpu": math.ceil(timeout) + 1, "nofile": NOFILE,
        "nobody": NOBODY, "root": ROOT, "skip": list(skip), "args": args or {}, "devices": list(devices),
    })
    start = time.monotonic()
    try:
        child = fork_from_zygote(preload) if preload and config.sandbox_zygote() else None
        if child is not None:
            run = _supervise(child, lambda: child.send(PRELUDE + code, settings, [bytes(8), _length(data), data]),
                            timeout)
        else:
            warm = warmup() if callable(warmup) else warmup
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", PRELUDE + code, settings],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=child_env(workdir), cwd=workdir, start_new_session=True, close_fds=True,
            )
            fresh = _ProcessChild(proc)
            run = _supervise(fresh, lambda: fresh.send([_length(warm), warm, _length(data), data]), timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.seconds = time.monotonic() - start
    ready = next((r for r in run.reports if r.get("phase") == "ready"), {})
    run.protections = [*ready.get("protections", []), "gpu-hidden", "minimal-env", "wall-timeout"]
    return run


def _length(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little")


def fork_from_zygote(preload: str):
    """A child forked from the zygote that ran ``preload`` (started now if none runs; it waits for the
    preload), or None when no zygote can run; the callers check `explain.config.sandbox_zygote`."""
    from explain.loading.sandbox_zygote import get_zygote

    zygote = get_zygote(preload, child_env(tempfile.gettempdir()), ROOT)
    return zygote.spawn(STARTUP_S) if zygote is not None else None


def prestart_zygote(preload: str) -> bool:
    """Start the zygote for ``preload`` now without waiting for it, so its imports and warm-up run
    beside the caller's own start (a CLI call that will load a user's graph); False when zygotes are
    off or it cannot start; it stops when this process exits. A later `run_in_sandbox` or model process with that preload uses it."""
    import atexit

    from explain.loading.sandbox_zygote import get_zygote

    zygote = get_zygote(preload, child_env(tempfile.gettempdir()), ROOT) if config.sandbox_zygote() else None
    if zygote is not None:
        atexit.register(_end_zygote, zygote)  # a call that ends before using it leaves no warm-up running
    return zygote is not None


def _end_zygote(zygote) -> None:
    """Close its control socket (a serving zygote exits and ends its children); one still in its
    preload, which has no children yet, is killed rather than waited for."""
    zygote._control.close()
    if zygote.proc is None:  # a shared zygote (`SharedZygote`): left warm for the next call
        return
    try:
        zygote.proc.wait(0.5)
    except subprocess.TimeoutExpired:
        zygote.proc.kill()


class _ProcessChild:
    """A fresh ``python -I`` child with the interface `_supervise` uses (as `ZygoteChild`)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self.reports = proc.stdout
        self.errors = proc.stderr

    def send(self, pieces: list[bytes]) -> None:
        try:
            for piece in pieces:
                self.proc.stdin.write(piece)
        except OSError:
            pass
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def take_exit(self, item: dict) -> bool:
        return False  # a fresh child's exit status comes from waitpid, never from its output

    def closed(self) -> None:
        pass

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the session it leads
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for stream in (self.reports, self.errors):
            stream.close()


def _supervise(child, send: Callable[[], None], timeout: float) -> SandboxRun:
    """Feed the child, read both outputs (bounded), enforce the two deadlines, reap it."""
    reports: list[dict] = []
    tail = bytearray()
    ready = threading.Event()

    def read_reports() -> None:
        used = 0
        for line in child.reports:
            used += len(line)
            if used > OUTPUT_BYTES:
                continue  # keep draining so the child never blocks, but stop keeping
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if not isinstance(item, dict) or ("exit" in item and child.take_exit(item)):
                continue
            reports.append(item)
            if item.get("phase") == "ready":
                ready.set()
        child.closed()

    def read_stderr() -> None:
        while chunk := child.errors.read1(65536):
            tail.extend(chunk)
            del tail[:-STDERR_BYTES]

    threads = [threading.Thread(target=t, daemon=True) for t in (send, read_reports, read_stderr)]
    for t in threads:
        t.start()
    timed_out = None
    started = time.monotonic()
    while not ready.wait(0.05) and child.poll() is None:  # imports: until ready or exit
        if time.monotonic() - started > STARTUP_S:
            timed_out = "startup"
            break
    if timed_out is None and child.wait(timeout) is None:
        timed_out = "run"
    if timed_out:
        child.kill()
    code = child.wait(30)
    for t in threads:
        t.join(5)
    child.close()
    return SandboxRun(-signal.SIGKILL if code is None else code, reports, tail.decode(errors="replace"), timed_out)


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11, ``signal 99`` for an unknown number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
