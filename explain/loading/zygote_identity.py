"""Who a shared zygote and its callers are, and what code it runs (`explain.loading.sandbox_zygote`).

Both ends of a shared zygote's unix socket check the other before trusting it, from the
kernel's ``SO_PEERCRED`` and ``/proc``:

- the zygote admits a caller that is no sandboxed process (`admitted`, `unsandboxed`): every
  sandboxed child sets ``no_new_privs`` (which it and its children can never drop) and leaves the
  user and network namespaces where it can; the caller held by a pidfd while it is checked, so a
  pid that a caller left and another process got is not taken for it;
- a caller sends nothing to a socket until `zygote_refusal` found the process listening on it
  (the one that called ``listen()``: the zygote calls it itself) to be unsandboxed, of this uid,
  and this interpreter running the zygote program for that very path, preload and root. A
  sandboxed child on a kernel without Landlock can write the private folder and put its own
  socket at the path, but can never pass for the zygote.

What it runs: the socket's path digests `code_stamp` (Glassbox's sources, the site-packages
folders; about 10 ms a call) and the settings a fork inherits (`inherited`); a zygote for newer
code removes the older one's socket (`retire_others`). An edit inside an installed package
(torch, shap, captum, transformers, ...) changes neither, and cannot be in the path: only the
zygote knows which files its preload imported (some 4,400 for the model preload, 4,800 in 626
folders for Hugging Face's), and stating them all takes 13-75 ms, too much for every call. So
the zygote watches them from the end of its preload (`CodeWatch`: inotify, a check costs
microseconds) and, once one changed, removes its socket and takes no new caller;
`SharedZygote.spawn` then starts a zygote for the edited code. (An edit while the preload runs,
after its file was imported, goes unseen.)
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import sysconfig

from explain.errors import one_line

log = logging.getLogger("glassbox.zygote")

SO_PEERPIDFD = 77  # Linux 6.5+: a pidfd of the peer, so its pid cannot be reused while it is checked


def peer(sock: socket.socket) -> tuple[int, int]:
    """The ``(pid, uid)`` of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def unsandboxed(pid: int) -> bool:
    """Process ``pid`` has no ``no_new_privs`` and is in this process's user and network namespaces."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            if any(line.split()[1:2] != ["0"] for line in fh if line.startswith("NoNewPrivs:")):
                return False
        return all(os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "net"))
    except (OSError, IndexError):
        return False


def admitted(conn: socket.socket) -> bool:
    """Whether the caller at the other end of ``conn`` (the zygote's side) is of this user and no
    sandboxed process (`unsandboxed`), checked while a pidfd holds it (Linux 6.5+): a caller that
    ended leaves its pid to the next process given it, which is then not taken for it."""
    try:
        pid, uid = peer(conn)
    except OSError:
        return False
    if pid <= 0 or uid != os.geteuid():
        return False
    with _held(conn) as pidfd:
        return pidfd != _ENDED and unsandboxed(pid) and _still(pidfd, pid)


_ENDED = -2  # `_held`: the peer has ended


@contextlib.contextmanager
def _held(sock: socket.socket):
    """A pidfd of ``sock``'s peer while the block runs (closed after); -1 on a kernel before 6.5 (the
    pid alone), `_ENDED` when the peer has ended."""
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        pidfd = _ENDED if exc.errno == errno.ESRCH else -1
    try:
        yield pidfd
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _still(pidfd: int, pid: int) -> bool:
    """The process the pidfd holds still runs as ``pid`` (True without a pidfd: the pid alone)."""
    return pidfd < 0 or _pidfd_pid(pidfd) == pid


def zygote_refusal(sock: socket.socket, expected: list[str | None]) -> str:
    """Why the process listening behind the connected ``sock`` is not the shared zygote, '' when it is.

    Args:
        expected: the zygote's command line; None where any value is fine (a file descriptor, an
            idle time). Its first item is the interpreter, whose binary ``/proc/PID/exe`` must be.
    """
    try:
        pid, uid = peer(sock)
    except OSError as exc:
        return f"its peer is unknown ({exc.strerror})"
    if pid <= 0 or uid != os.geteuid():
        return f"its peer (pid {pid}) runs as uid {uid}"
    with _held(sock) as pidfd:
        if pidfd == _ENDED:
            return f"its peer (pid {pid}) has ended"
        if not unsandboxed(pid):
            return f"its peer (pid {pid}) is a sandboxed process (no_new_privs or other namespaces)"
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().split(b"\0")[:-1]
        except OSError as exc:
            return f"its peer (pid {pid}) cannot be read ({exc.strerror})"
        if exe != os.path.realpath(str(expected[0])):
            return f"its peer (pid {pid}) runs {exe}, not this interpreter"
        if len(cmdline) != len(expected) or any(
                want is not None and os.fsencode(want) != got for want, got in zip(expected, cmdline)):
            return f"its peer (pid {pid}) does not run the zygote program for this socket"
        if not _still(pidfd, pid):
            return f"its peer (pid {pid}) ended while it was checked"
        return ""


class NotTheZygote(Exception):
    """The process listening at a shared zygote's path is no such zygote (`zygote_refusal`)."""


def connect_to_zygote(path: str, expected: list[str | None]) -> socket.socket:
    """A connection to the shared zygote at ``path``, made only once its peer proved to be that zygote.

    Raises:
        OSError: nothing listens there.
        NotTheZygote: the process listening there is another one (a sandboxed child's socket); logged.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        reason = zygote_refusal(sock, expected)
    except OSError:
        sock.close()
        raise
    if reason:
        sock.close()
        log.warning(one_line(f"Not using the shared zygote at {path}: {reason}; this call starts its own."))
        raise NotTheZygote(reason)
    return sock


def _pidfd_pid(pidfd: int) -> int:
    """The pid a pidfd refers to; -1 once that process ended."""
    with open(f"/proc/self/fdinfo/{pidfd}") as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith("Pid:")), -1)


def imported_files() -> list[str]:
    """The source (or extension) file of every module this process imported, sorted."""
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return sorted(f for f in files if isinstance(f, str) and os.path.isabs(f))


def file_stamp(files: list[str]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of each of ``files`` that exists (a removed one drops out)."""
    stamp = []
    for path in files:  # ~4,800 files after the Hugging Face preload: each microsecond counts
        try:
            st = os.stat(path)
        except OSError:
            continue
        stamp.append((path, st.st_size, st.st_mtime_ns))
    return stamp


#: inotify events on a folder that concern a file in it (they name it): written, touched, moved, made, removed
_FILE_EVENTS = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
#: events that end a watch or lose events (the folder removed or moved, unmounted; the queue overflowed)
_LOST = 0x400 | 0x800 | 0x2000 | 0x4000 | 0x8000


class CodeWatch:
    """Whether one of ``files`` (a process's `imported_files`) changed since this watch began.

    With inotify, one watch per folder and an event naming one of the files (or a lost watch or
    queue) says so: a check reads what is queued, microseconds. Where inotify is out (no instance
    or watch left), each check stats every file against the first `file_stamp` (13-75 ms for the
    4,800 files of the Hugging Face preload on a loaded 2-core machine).
    """

    def __init__(self, files: list[str]):
        self._files = files
        self._names: dict[int, set[bytes]] = {}  # watch descriptor -> the watched files' names in its folder
        self._changed = False
        try:
            self._fd = self._watch()
            self._stamp: list = []
        except OSError:
            self._fd = -1
            self._stamp = file_stamp(files)

    def _watch(self) -> int:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        folders: dict[str, set[bytes]] = {}
        for path in self._files:
            folders.setdefault(os.path.dirname(path), set()).add(os.fsencode(os.path.basename(path)))
        for folder, names in folders.items():
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), _FILE_EVENTS | _LOST)
            if wd < 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            self._names[wd] = names
        return fd

    def changed(self) -> bool:
        """True once one of the files was written, touched, replaced or removed (it stays so)."""
        if not self._changed and self._fd < 0:
            self._changed = file_stamp(self._files) != self._stamp
        while not self._changed and self._fd >= 0:
            try:
                events = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            while events and not self._changed:
                wd, mask, _, size = struct.unpack_from("iIII", events)
                name = events[16:16 + size].split(b"\0", 1)[0]
                self._changed = bool(mask & _LOST) or name in self._names.get(wd, ())
                events = events[16 + size:]
        return self._changed

    def close(self) -> None:
        """Stop watching (a forked child closes its copy)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def inherited(status: list[str]) -> list:
    """What a forked child inherits from whoever started the zygote besides its environment: resource
    limits, nice value, cgroups (a memory limit), umask and ignored signals. A caller with other ones
    gets a zygote of its own, so its model processes run with its settings, not an earlier call's."""
    import resource

    limits = [(name, resource.getrlimit(getattr(resource, name))) for name in sorted(dir(resource))
              if name.startswith("RLIMIT_")]
    with open("/proc/self/cgroup") as fh:
        cgroup = fh.read()
    return [limits, os.getpriority(os.PRIO_PROCESS, 0), cgroup,
            [line for line in status if line.startswith(("Umask:", "SigIgn:"))]]


def retire_others(path: str) -> None:
    """Remove the sockets of zygotes for the same arguments but older code (another `code_stamp`):
    each ends once its callers are done instead of waiting out its idle time."""
    folder, name = os.path.split(path)
    stable = name.split("-", 1)[0] + "-"
    with contextlib.suppress(OSError):
        for other in os.listdir(folder):
            if other.startswith(stable) and other.endswith(".sock") and other != name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, other))


def code_stamp(root: str) -> list:
    """Size and modification time of every Python file under ``root``'s ``explain`` and
    ``sample_models``, and of each site-packages folder (a package installed or removed changes it)."""
    stamp: list = []
    for top in ("explain", "sample_models"):
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".txt")):
                    st = os.stat(os.path.join(folder, name))
                    stamp.append((os.path.relpath(os.path.join(folder, name), root), st.st_size, st.st_mtime_ns))
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        with contextlib.suppress(OSError):
            stamp.append((folder, os.stat(folder).st_mtime_ns))
    return stamp
