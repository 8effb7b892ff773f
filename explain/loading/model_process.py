"""Model processes: a user's graph is loaded and run only in a sandboxed child.

A TorchScript or ``.pt2`` file is a program. `explain.loading.loader.load_model`
checks it statically in the server, then hands its bytes to a `ModelProcess`: a
child forked from a warmed-up zygote (`explain.loading.sandbox_zygote`) that locks
itself down with every layer of `explain.loading.sandbox` (no file writes, no
network, unprivileged, address-space limit) for its whole life, loads the graph
and serves requests until it is stopped. The server's `LoadedModel` holds a
`RemoteModule` instead of the graph; the server never calls ``torch.jit.load`` or
deserialises a ``.pt2`` program.

The one narrow interface (requests on the child's socket, one at a time):

- ``forward``: x -> logits; with ``grad`` the child keeps the graph, and
  ``backward`` (grad of the logits -> grad of x) finishes it. `RemoteModule` wraps
  the pair in an autograd function, so the engine's chunks, Captum and the
  metrics differentiate a remote model exactly as a local one;
- ``call``: a Glassbox library function marked `in_model_process` (an explainer
  that needs the graph itself: DeepLIFT pair runs, Grad-CAM and layer hooks; the
  structure views' hooked activations and attention) runs in the child on the
  child's model; its progress calls come back as messages.

Arrays travel as raw bytes with a declared dtype and shape, checked against the
bytes present; a ``call``'s result comes back through ``torch.load(weights_only=True)``
with Glassbox's own dataclasses and numpy's array types allowed, nothing else.
The child is untrusted: everything it says is bounded and checked.

A crash, a hang (`explain.config.model_call_timeout_s`), or running out of its
memory fails that one request with one line (`ModelProcessFailed`, exit 3 on
the command line); the child is gone and the next request starts a new one from
the same bytes. At most `explain.config.model_processes` children live at once
(least recently used stopped first); a child ends with the last `LoadedModel`
that holds it.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pickle
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from explain import config
from explain.digest import digest_bytes
from explain.errors import CorruptFile, GlassboxError, InputRefused, UnsafeFile
from explain.loading.model_channel import (
    Channel,
    Progress,
    alive,
    checked_info,
    cpu_seconds,
    deadline,
    error_from,
)
from explain.loading.model_start import child_settings, open_child, sandbox
from explain.loading.model_wire import WireError, check_meta, decode_result, describe, to_wire

#: Longest JSON header line the parent reads from a child.
HEADER_BYTES = 1 << 16
#: Graphs kept in a child for a later ``backward`` (oldest dropped first).
PENDING_GRAPHS = 4
#: Largest JSON tree of a ``call``'s result.
TREE_BYTES = 64 << 20
#: CPU seconds a child may burn between two requests before it is replaced (it should be idle).
IDLE_CPU_S = 2.0


class ModelProcessFailed(InputRefused):
    """The model process crashed, ran out of time or memory: this request failed, nothing else."""


# ==========================================================================
# the parent's side
# ==========================================================================
_LIVE: collections.OrderedDict[int, weakref.ref] = collections.OrderedDict()
_LIVE_LOCK = threading.Lock()


def live_processes() -> list[ModelProcess]:
    """The model processes whose child is running, least recently used first."""
    with _LIVE_LOCK:
        found = [ref() for ref in _LIVE.values()]
    return [p for p in found if p is not None and p.running]


def _touch(process: ModelProcess) -> None:
    """Mark ``process`` used now; stop the least recently used ones past the cap."""
    with _LIVE_LOCK:
        for key in [k for k, ref in _LIVE.items() if ref() is None or not ref().running]:
            del _LIVE[key]
        _LIVE.pop(id(process), None)
        _LIVE[id(process)] = weakref.ref(process)
        over = len(_LIVE) - config.model_processes()
        oldest = [ref() for ref in list(_LIVE.values())[:-1]]
    for other in oldest:
        if over <= 0:
            break
        if other is not None and other._lock.acquire(blocking=False):  # a busy one is passed over
            try:
                other.stop()
            finally:
                other._lock.release()
            over -= 1


class ModelProcess:
    """One user's graph, loaded in a sandboxed child and served from there.

    Args:
        data: the file's bytes (already statically checked by the loader).
        fmt: ``torchscript``, ``export`` or ``huggingface``.
        imports: trusted module names the child imports before its lock (see `load_remote_parts`).
        sha256: the bytes' digest (for messages and caches).
    """

    def __init__(self, data: bytes, fmt: str, sha256: str = "", imports: list[str] | None = None):
        self._data, self.format, self.sha256 = data, fmt, sha256
        self._imports = list(imports or [])
        self._lock = threading.RLock()
        self._channel: Channel | None = None
        self.info: dict[str, Any] = {}
        self.protections: list[str] = []
        self.starts = 0
        #: answers that depend only on the graph and the model's state (method compatibility)
        self.memo: dict[tuple, Any] = {}
        self._finalizer: Any = None

    @property
    def data(self) -> bytes:
        """The file's bytes this process was started from (what a restart starts from again)."""
        return self._data

    @property
    def running(self) -> bool:
        return self._channel is not None

    # -- life -----------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the child (if it is not running) and return what it reported of the graph."""
        with self._lock:
            if self._channel is None:
                self._spawn()
            _touch(self)
            return self.info

    def stop(self) -> None:
        """Stop the child (a later request starts a new one)."""
        with self._lock:
            channel, self._channel = self._channel, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if channel is not None:
            channel.close()
        with _LIVE_LOCK:
            _LIVE.pop(id(self), None)

    def _spawn(self) -> None:
        workdir = tempfile.mkdtemp(prefix="glassbox-model-")
        settings = child_settings(self.format, self._imports, workdir)
        try:
            channel = open_child(self._data, self.format, settings, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        channel.workdir = workdir  # the child's empty cwd, removed with it
        self.starts += 1
        try:
            with deadline(channel, sandbox().STARTUP_S):  # the child's own start: forked, or imports
                ready = self._read_header(channel, "starting")
            if ready.get("phase") != "ready":
                raise self._failure(channel, "starting", ready)
            self.protections = [str(p)[:80] for p in ready.get("protections", [])][:32]
            with deadline(channel, config.model_call_timeout_s()):
                loaded = self._read_header(channel, "loading")
        except BaseException:
            channel.close()
            if channel.expired:
                raise self._timeout("loading") from None
            raise
        if not loaded.get("ok"):
            channel.close()
            raise self._failure(channel, "loading", loaded)
        self.info = checked_info(loaded.get("info"))
        self._channel = channel
        self._finalizer = weakref.finalize(self, channel.close)

    # -- one request ------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, int | None]:
        """Logits of ``x`` [B, ...] from the child; ``keep``: it keeps the graph for `backward`."""
        rows = int(x.shape[0])

        def fits(shape: tuple[int, ...]) -> bool:  # [B, K], K at most the label cap
            return len(shape) == 2 and shape[0] == rows and 1 <= shape[1] <= config.max_labels()

        reply, out = self._request({"op": "forward", "keep": bool(keep)}, [x], "running the model", expect=fits)
        handle = reply.get("handle") if keep else None
        ok = isinstance(handle, int) and not isinstance(handle, bool)
        return torch.from_numpy(out).to(x.device), (handle if ok else None)

    def backward(self, handle: int, grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The gradient of the kept graph ``handle``'s inputs for ``grad`` of its logits."""
        want = tuple(like.shape)
        _, out = self._request({"op": "backward", "handle": int(handle)}, [grad], "differentiating the model",
                               expect=lambda shape: tuple(shape) == want)
        return torch.from_numpy(out).to(device=like.device, dtype=like.dtype)

    def call(self, func: Callable, model: Any, args: tuple, kwargs: dict, what: str = "") -> Any:
        """Run the library function ``func`` (marked `in_model_process`) in the child on its model."""
        callbacks: list[Callable] = []

        def swap(value: Any) -> Any:
            if value is model:
                return _MODEL
            if callable(value) and not isinstance(value, (type, np.ndarray, torch.Tensor)) and not _is_library(value):
                callbacks.append(value)
                return _Callback(len(callbacks) - 1)
            return value

        payload = pickle.dumps((  # to the child, which trusts the server
            func.__module__, func.__qualname__, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()},
        ))
        _, result = self._request({"op": "call"}, [], what or f"running {func.__name__}", payload=payload,
                                  callbacks=callbacks, state=_model_state(model))
        return result

    def _request(self, header: dict, arrays: list[torch.Tensor], what: str, payload: bytes = b"",
                 callbacks: list[Callable] | None = None, expect: Callable[[tuple[int, ...]], bool] | None = None,
                 state: dict | None = None) -> tuple[dict, Any]:
        with self._lock:
            self.start()
            channel = self._channel
            if channel is not None and cpu_seconds(channel.pid) - channel.cpu_mark > IDLE_CPU_S:
                self._drop(channel)  # it worked while it had nothing to do: a fresh one serves instead
                self.start()
                channel = self._channel
            assert channel is not None
            if state is not None:  # the model's state travels once per child, then by its key
                key = digest_bytes(json.dumps(state, sort_keys=True, default=str).encode())
                head = pickle.dumps((key, None if channel.state_key == key else state))
                payload = len(head).to_bytes(8, "little") + head + payload
            wire = [to_wire(t) for t in arrays]
            data = json.dumps({**header, "arrays": [describe(a) for a in wire], "payload": len(payload)}).encode()
            try:
                with deadline(channel, config.model_call_timeout_s()):
                    for blob in [len(data).to_bytes(8, "little") + data, *(a.tobytes() for a in wire), payload]:
                        if blob and channel.sock is None:
                            channel.writer.write(blob)
                        elif blob:
                            channel.writer.sendall(blob)
                    if channel.sock is None:
                        channel.writer.flush()
                    if state is not None:
                        channel.state_key = key  # sent: the child has it from now on
                    progress = Progress(callbacks or [])
                    while "progress" in (reply := self._read_header(channel, what)):
                        progress(reply)
                    progress.finish()
                    if not reply.get("ok"):
                        if reply.get("fatal"):  # the child ends itself (a graph that kept state)
                            self._drop(channel)
                            raise ModelProcessFailed(str(reply.get("error") or "the model process stopped")[:500],
                                                     str(reply.get("hint") or "")[:300] or None)
                        raise error_from(reply)
                    if header["op"] == "call":
                        result = self._read_result(channel, reply, what)
                    else:
                        result = self._read_array(channel, reply, what, expect)
                channel.cpu_mark = cpu_seconds(channel.pid)
                return reply, result
            except WireError:
                self._drop(channel)  # out of step with the protocol: never read from it again
                raise
            except GlassboxError:
                if channel.expired:
                    raise self._timeout(what) from None
                raise
            except BaseException as exc:
                self._drop(channel)
                if channel.expired:
                    raise self._timeout(what) from None
                if isinstance(exc, (OSError, EOFError, ValueError)):
                    raise self._failure(channel, what, {}) from None
                raise  # Cancelled or an error in a callback: the child was stopped mid-work

    def _read_array(self, channel: Channel, reply: dict, what: str,
                    expect: Callable[[tuple[int, ...]], bool] | None) -> np.ndarray:
        metas = reply.get("arrays")
        if not isinstance(metas, list) or len(metas) != 1:
            raise WireError("The model process sent a reply of the wrong kind.")
        dtype, shape, nbytes = check_meta(metas[0], config.sandbox_memory_bytes())
        if dtype.kind != "f" or (expect is not None and not expect(shape)):
            raise WireError(f"The model process sent an array of the wrong type or shape {list(shape)[:4]}.")
        return self._read_into(channel, dtype, shape, nbytes, what)

    def _read_result(self, channel: Channel, reply: dict, what: str) -> Any:
        size = reply.get("tree_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= TREE_BYTES:
            raise WireError("The model process sent a result of an impossible size.")
        try:
            body = json.loads(self._read_exact(channel, size, what))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise WireError("The model process sent a malformed result.") from None
        metas = body.get("arrays") if isinstance(body, dict) else None
        if not isinstance(metas, list) or len(metas) > 100_000:
            raise WireError("The model process sent a malformed result.")
        budget, arrays = config.sandbox_memory_bytes(), []
        checked = []
        for meta in metas:  # every size checked against the one budget before any is read
            dtype, shape, nbytes = check_meta(meta, budget)
            budget -= nbytes
            checked.append((dtype, shape, nbytes))
        for dtype, shape, nbytes in checked:
            arrays.append(self._read_into(channel, dtype, shape, nbytes, what))
        try:
            return decode_result(body.get("tree"), arrays)
        except RecursionError:
            raise WireError("The model process sent a result nested too deeply.") from None

    def _read_into(self, channel: Channel, dtype: np.dtype, shape: tuple[int, ...], nbytes: int,
                   what: str) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)  # the bytes announced, read straight into place
        view, done = memoryview(out).cast("B"), 0
        while done < nbytes:
            got = channel.reader.readinto(view[done: done + (1 << 22)])
            if not got:
                raise self._failure(channel, what, {})
            done += got
        return out

    @staticmethod
    def _timeout(what: str) -> ModelProcessFailed:
        return ModelProcessFailed(
            f"The model did not finish {what} within {config.model_call_timeout_s():.0f} s, so its "
            "process was stopped; nothing else was affected.",
            "For an honest model, try fewer inputs or steps (an operator can raise GLASSBOX_MODEL_CALL_TIMEOUT_S).")

    def _drop(self, channel: Channel) -> None:
        with self._lock:
            if self._channel is channel:
                self._channel = None
                if self._finalizer is not None:
                    self._finalizer.detach()
                    self._finalizer = None
        channel.close()

    def _read_header(self, channel: Channel, what: str) -> dict:
        while True:
            line = channel.reader.readline(HEADER_BYTES)
            if not line:
                raise self._failure(channel, what, {})
            try:
                item = json.loads(line)
            except ValueError:
                raise ModelProcessFailed("The model process sent a malformed reply.") from None
            if not isinstance(item, dict):
                raise ModelProcessFailed("The model process sent a malformed reply.")
            if "exit" in item and len(item) == 1:  # the zygote's line: the child has exited
                holder = getattr(channel, "exit_holder", None)
                if holder is not None and isinstance(item["exit"], int) and not alive(channel.pid):
                    holder["code"] = item["exit"]  # believed only once the child is gone (else forged)
                raise self._failure(channel, what, {})
            return item

    def _read_exact(self, channel: Channel, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = channel.reader.read(min(n - len(buf), 1 << 22))
            if not chunk:
                raise self._failure(channel, what, {})
            buf.extend(chunk)
        return bytes(buf)

    def _failure(self, channel: Channel, what: str, reply: dict) -> GlassboxError:
        """The one-line error for a child that died, or refused while starting / loading."""
        if reply and not reply.get("ok", True) and "error" in reply:
            return error_from(reply)
        self._drop(channel)
        code = channel.exit_code()
        for _ in range(20):
            if code is not None:
                break
            time.sleep(0.05)
            code = channel.exit_code()
        if code is not None and code < 0:
            from explain.loading.sandbox import signal_name

            sig = signal_name(-code)
            if sig == "SIGKILL":
                return ModelProcessFailed(
                    f"The model's process was killed while {what}, most likely for using too much memory; "
                    "nothing else was affected.", "Try fewer inputs or a smaller model.")
            return ModelProcessFailed(
                f"The model crashed its process ({sig}) while {what}; it runs apart from the server, "
                "so nothing else was affected.", "The file is malformed or hostile; export the model again.")
        tail = bytes(channel.stderr).decode(errors="replace").strip().splitlines()
        last = tail[-1][:200] if tail else "it exited without a reply"
        return ModelProcessFailed(f"The model's process stopped while {what} ({last}).")


def load_remote_parts(data: bytes, fmt: str, embedded: Any = None, probe: Any = None, *,
                      architecture: str | None = None, extra: dict | None = None,
                      imports: list[str] | None = None) -> Any:
    """A user's model loaded in its own model process; the parts hold its `RemoteModule`.

    Args:
        imports: trusted module names the child imports before it locks itself down
            (a Hugging Face model's transformers module).

    Raises:
        ModelProcessFailed, CorruptFile, ...: the process could not load the model (one line).
    """
    from explain.digest import digest_bytes
    from explain.loading.source import LoadedParts

    process = ModelProcess(data, fmt, digest_bytes(data), imports=imports)
    info = process.start()
    return LoadedParts(RemoteModule(process), fmt, embedded_spec=embedded, vetting=probe,
                       architecture=architecture, extra=dict(extra or {}),
                       fixed_batch_size=info.get("fixed_batch_size"), process=process)


def _is_library(value: Any) -> bool:
    return getattr(value, "__module__", "") in ("builtins",)


def _model_state(model: Any) -> dict[str, Any]:
    """What the child's copy of the model must agree on with the server's (sent once per child and change;
    a tokenizer in the spec can be megabytes)."""
    return {"spec": model.spec.to_dict(), "name": model.name, "max_batch_rows": model.max_batch_rows,
            "architecture": model.architecture,
            "fixed_batch_size": model.fixed_batch_size, "sha256": model.sha256,
            "extra": {k: v for k, v in model.extra.items() if isinstance(v, (str, int, float, bool, type(None)))}}


class _ModelMarker:
    """Stands for the model in a ``call``'s arguments (the child puts its own in)."""

    def __reduce__(self):
        return (_model_marker, ())


def _model_marker() -> _ModelMarker:
    return _MODEL


_MODEL = _ModelMarker()


@dataclasses.dataclass(frozen=True)
class _Callback:
    """Stands for a callback (progress) in a ``call``'s arguments: its calls come back as messages."""

    index: int


# ==========================================================================
# marking library functions and the remote module
# ==========================================================================
def in_model_process(func: Callable) -> Callable:
    """Run ``func(model, ...)`` in the model's process when the model has one.

    For a model loaded in this process (eager weights, or inside the child itself)
    the function runs here. Arguments are pickled to the child (it trusts the
    server); callables among them (progress) are called back with what the child
    passes them; the result is read back as checked plain data only (`explain.loading.model_wire`).
    """

    @functools.wraps(func)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        process = getattr(model, "process", None)
        if process is None:
            return func(model, *args, **kwargs)
        return process.call(wrapper, model, (model, *args), kwargs)

    wrapper.runs_in_model_process = True
    return wrapper


class RemoteModule(nn.Module):
    """The server's stand-in for a graph that lives in a `ModelProcess`.

    Calling it runs the graph in the child: forward only, or (when the input
    requires a gradient) forward now and backward when autograd asks.
    """

    def __init__(self, process: ModelProcess):
        super().__init__()
        self.process = process

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _RemoteCall.apply(self.process, x)
        out, _ = self.process.forward(x)
        return out.to(x.dtype) if x.is_floating_point() else out

    def extra_repr(self) -> str:
        return f"{self.process.format}, in a sandboxed process"


class _RemoteCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, process: ModelProcess, x: torch.Tensor) -> torch.Tensor:  # x [B, ...] -> [B, K]
        out, handle = process.forward(x, keep=True)
        ctx.process, ctx.handle = process, handle
        ctx.save_for_backward(x)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad [B, K] -> (None, [B, ...])
        (x,) = ctx.saved_tensors
        return None, ctx.process.backward(ctx.handle, grad.contiguous(), x)


__all__ = ["ModelProcess", "ModelProcessFailed", "RemoteModule", "in_model_process", "live_processes",
           "CorruptFile", "UnsafeFile"]
