"""The server's end of a model process (`explain.loading.model_process`): the channel to a started child,
the one watchdog that stops a child whose request ran past its deadline, and the checks on what the
child says — its graph's info, its errors (as the library's own classes, never any other) and its
progress messages. The child is untrusted: everything it says is bounded and checked here.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from explain.errors import GlassboxError

#: The child's error classes the server raises as they are (any other becomes `ModelProcessFailed`).
CHILD_ERRORS = ("InputRefused", "UnsafeFile", "CorruptFile", "IncompatibleInput", "TooLarge", "UsageError")


class ModelRaised(RuntimeError):
    """The graph raised an ordinary error in its process (``Type: message``, one line); callers
    handle it as they handle a local model's ``RuntimeError`` (out-of-memory text included)."""


class Channel:
    """A started child: where requests go and replies come from, and how to stop it."""

    def __init__(self, pid: int, writer: Any, reader: Any, errors: Any, kill: Callable[[], None],
                 exit_code: Callable[[], int | None], close: Callable[[], None], sock: socket.socket | None):
        self.pid, self.writer, self.reader, self.errors = pid, writer, reader, errors
        self.kill, self.exit_code, self._close, self.sock = kill, exit_code, close, sock
        self.stderr = bytearray()
        self.expired = False
        self.workdir = ""
        self.cpu_mark = 0.0
        self.state_key: str | None = None  # the model state this child was last sent (`_model_state`)
        self._stop = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        """Keep the last 16 KiB of the child's stderr; never blocks `close` (select, then a stop flag)."""
        import select

        fd = self.errors.fileno()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.stderr.extend(chunk)
                del self.stderr[:-16384]
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.errors.close()
            except OSError:
                pass

    def shut(self) -> None:
        """Kill the child and end any read of its replies now (a blocked read returns end-of-file)."""
        self.kill()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.shut()
        self._stop.set()
        self._close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Watchdog:
    """One thread that stops children whose request ran past its deadline (no thread per request)."""

    def __init__(self):
        self._deadlines: dict[int, tuple[float, Channel]] = {}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, channel: Channel, seconds: float) -> int:
        with self._lock:
            token = id(channel) ^ int(time.monotonic() * 1e9)
            self._deadlines[token] = (time.monotonic() + seconds, channel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="glassbox-model-watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()
            return token

    def release(self, token: int) -> None:
        with self._lock:
            self._deadlines.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [t for t, (when, _) in self._deadlines.items() if when <= now]
                expired = [self._deadlines.pop(t)[1] for t in due]
                if not expired:
                    soonest = min((when for when, _ in self._deadlines.values()), default=now + 60)
                    self._lock.wait(max(0.01, soonest - now))
                    continue
            for channel in expired:
                channel.expired = True
                channel.shut()


WATCHDOG = Watchdog()


@contextlib.contextmanager
def deadline(channel: Channel, seconds: float) -> Iterator[None]:
    """Stop the child (and so end any read from it) if the block runs past ``seconds``."""
    token = WATCHDOG.watch(channel, seconds)
    try:
        yield
    finally:
        WATCHDOG.release(token)


class Progress:
    """A child's progress messages, checked and passed on to the server's callbacks at most every 50 ms."""

    EVERY_S = 0.05

    def __init__(self, callbacks: list[Callable]):
        self.callbacks, self.last, self.pending = callbacks, 0.0, None

    def __call__(self, reply: dict) -> None:
        index, args = reply.get("progress"), reply.get("args")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.callbacks):
            return
        if not isinstance(args, list):
            return
        clean = []
        for a in args[:4]:
            if isinstance(a, bool) or not isinstance(a, (int, float, str)):
                continue
            if isinstance(a, float) and not math.isfinite(a):
                continue
            clean.append(a[:200] if isinstance(a, str) else a)
        self.pending = (index, clean)
        now = time.monotonic()
        if now - self.last >= self.EVERY_S:
            self.finish()
            self.last = now

    def finish(self) -> None:
        if self.pending is not None:
            index, args = self.pending
            self.pending = None
            self.callbacks[index](*args)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def error_from(reply: dict) -> GlassboxError:
    """The child's error as the library's own class (names from `explain.errors` only)."""
    from explain import errors

    name = reply.get("error_class")
    reason = str(reply.get("error") or "the model failed")[:500]
    hint = reply.get("hint")
    hint = str(hint)[:300] if isinstance(hint, str) else None
    cls = getattr(errors, name, None) if name in CHILD_ERRORS else None  # never Cancelled, PermissionDenied...
    if isinstance(cls, type) and issubclass(cls, GlassboxError):
        return cls(reason, hint)
    return ModelRaised(reason)  # as the graph's own error would have been raised here


def checked_info(info: Any) -> dict[str, Any]:
    """What the child says of its graph, reduced to checked plain values."""
    info = info if isinstance(info, dict) else {}

    def small_int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 else None

    def guess(v: Any) -> dict | None:
        if not isinstance(v, dict):
            return None
        shape = v.get("input_shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(d is None or small_int(d) for d in shape):
            return None
        text = {k: str(v.get(k))[:40] for k in ("dtype", "source", "modality") if isinstance(v.get(k), str)}
        return {"input_shape": shape, **text}

    def causal(v: Any) -> dict | None:  # a causal .pt2's inputs (`explain.loading.export_lm.LMSignature`)
        if not isinstance(v, dict):
            return None
        return {"min_length": small_int(v.get("min_length")) or 1, "max_length": small_int(v.get("max_length")),
                "static_length": small_int(v.get("static_length")), "mask": bool(v.get("mask"))}

    return {"fixed_batch_size": small_int(info.get("fixed_batch_size")) or None,
            "parameters": small_int(info.get("parameters")) or 0,
            "signature": guess(info.get("signature")), "module_guess": guess(info.get("module_guess")),
            "hookable": bool(info.get("hookable")), "causal_lm": causal(info.get("causal_lm"))}
