"""Vetting a user's graph (TorchScript, ``.pt2``) in the sandbox before the server runs it.

A TorchScript or ``torch.export`` file is a program: its cost can depend on
the batch size (``if x.size(0) > 1: torch.zeros(10**10)``). So before the
server runs such a graph, `probe_graph` loads it in a `explain.loading.sandbox` child
and runs a forward *and* a backward pass at every batch size the engine may
later use, with random inputs in the spec's range (float: ``randn``; token
ids: uniform below the vocabulary size, below 2 when the spec has none),
under the sandbox's memory, CPU and wall-clock limits.

Batch sizes: the powers of two 1, 2, 4, ... up to `explain.config.vetted_batch`
(or only the fixed size of a static-batch ``.pt2``). Sizes are tried in
increasing order; the child stops early, keeping the sizes done so far, when
the last one predicts that the next would not fit the time or memory budget
(a legitimately heavy model gets a smaller cap instead of a refusal), or when
a size larger than the first raises an ordinary error (a model that only
accepts batch 1). Running out of memory or time at any size refuses the file. At the first size
above 1 the child also runs that batch's first row alone: a graph whose row outputs depend on the
other rows of the batch (``x - x.mean(0)``, batch norm left in training mode) stops there at size 1
(`GraphProbe.rows_mix`), so the server runs it one row at a time and every row's explanation and
score is its own, whatever the chunking.

The largest size that passed becomes ``LoadedModel.max_batch_rows``; the
engine, ``LoadedModel.predict_logits``, attention capture and the structure
probe run such a model only in chunks padded to one of the vetted sizes
(`LoadedModel.padded_rows`), so on those paths the server runs the graph only
at batch sizes the sandbox has run, in the same mode (forward, or forward and
backward). `explain.loading.loader.load_model` vets every TorchScript and ``.pt2``
file once the spec is known (the TorchScript probe during loading is reused
when it already had that spec).

Not covered: the sandbox runs the graph on random inputs, so a bomb that
fires only for particular input *values* (a real image, a chosen token, a
NaN) is not seen; text models are differentiated with respect to their
parameters in the child (standing in for the engine's embedding gradients),
so that cost is an estimate; DeepLift / SHAP-deep rules (their own captured
graph, in chunks of their ``batch_size``) and layer importance / layer
Grad-CAM on an unflattened ``.pt2`` (captum's batches) run the graph at
batch sizes of their own; a `LoadedModel` built by hand (not by
``load_model``) has no cap.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from explain import config
from explain.digest import digest_bytes
from explain.errors import CorruptFile, GlassboxError, IncompatibleInput, TooLarge, UnsafeFile
from explain.loading.sandbox import SandboxRun, run_in_sandbox, signal_name
from explain.spec import InputSpec

#: Probe outcomes (a `GraphProbe` or the refusal) kept per process, keyed by the bytes'
#: sha256, the loader, the spec and the limits: a page rerun does not run a bomb again.
#: A `VettingMemory` (the workspace's, `explain.workspace.vetting`) keeps them across processes.
DONE_CACHE_SIZE = 128
_DONE: dict[tuple, Any] = {}
#: Formats whose module is a user's graph: vetted in the sandbox before the server runs it.
UNTRUSTED_GRAPH_FORMATS = ("torchscript", "export")
#: The child's loader for a TorchScript archive (run after `explain.loading.sandbox.PRELUDE`,
#: before `VET_CODE`): imports torch and defines ``load_graph(data) -> module``.
TORCHSCRIPT_CHILD_CODE = r"""
import io, torch


def load_graph(data):
    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
"""
#: The same for a ``.pt2`` (`explain.loading.export`'s hardened reader, no pickle).
EXPORT_CHILD_CODE = r"""
import encodings.cp437  # zipfile decodes non-UTF-8 member names with it (imported before the lock)
import torch
from explain.loading.export import load_export_parts


def load_graph(data):
    return load_export_parts(data).module
"""
def zygote_preload(fmt: str) -> str:
    """The zygote's preload for vetting ``torchscript`` or ``export``: the one zygote model
    processes fork from too (`explain.loading.sandbox_zygote.MODEL_PRELOAD`), warmed up on
    tiny trusted graphs of both formats."""
    from explain.loading.sandbox_zygote import MODEL_PRELOAD

    return MODEL_PRELOAD


#: The vetting program, run after a loader's code (which defines ``load_graph``).
VET_CODE = r"""
import time as _time
import torch
from explain.errors import one_line as _one_line
torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass


def _memory_error(exc):
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "alloc" in text or "out of memory" in text


def _inputs(spec, rows):
    shape = (rows, *spec["input_shape"])
    if spec["dtype"].startswith("int"):
        return torch.randint(0, max(int(spec.get("vocab_size") or 2), 1), shape, dtype=torch.int64)
    return torch.randn(shape)


def _forward_backward(module, x):
    # [B, *input_shape] -> logits [B, K]; input gradients (float) or parameter gradients (token ids)
    wrt = [x.requires_grad_(True)] if x.is_floating_point() else [
        p for p in module.parameters() if p.is_floating_point() and p.requires_grad]
    # a graph cast to half precision takes its float inputs so (`explain.model.graph_float_dtype`)
    low = {t.dtype for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}
    cast = low.pop() if len(low) == 1 and low <= {torch.float16, torch.bfloat16} and x.is_floating_point() else None
    with torch.enable_grad():
        out = module(x if cast is None else x.to(cast))
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returns {type(out).__name__}, not a tensor")
        if wrt and out.requires_grad and out.is_floating_point():
            torch.autograd.grad(out.float().sum(), wrt, allow_unused=True)
    return out.detach()


if WARMUP:  # a trusted graph through the same path: lazy imports happen before the lock
    _forward_backward(load_graph(WARMUP), torch.randn(2, 4))
report(phase="ready", protections=lock_down())
start = _time.monotonic()  # the parent's wall clock starts at "ready" too
phase, rows = "load", 0
try:
    module = load_graph(DATA)
    del DATA
    result = {"ok": True, "batches": [], "output_shape": None, "stopped": None}
    spec, sizes = ARGS.get("spec"), ARGS.get("sizes") or []
    vm_before, rss_before = _vm("VmPeak"), _vm("VmRSS")
    result["rss_before"] = rss_before
    for i, rows in enumerate(sizes if spec else []):
        phase = "forward"
        report(phase="batch", rows=rows)
        x = _inputs(spec, rows)
        t0 = _time.perf_counter()
        try:
            out = _forward_backward(module, x)
            if out.dim() < 1 or out.shape[0] != rows:
                raise ValueError(f"the model returns {list(out.shape)} for a batch of {rows}")
        except Exception as exc:
            if i == 0 or _memory_error(exc):
                raise
            result["stopped"] = f"error at batch {rows}: {_one_line(exc, 160)}"
            break
        seconds = _time.perf_counter() - t0
        if rows > 1 and sizes[0] == 1 and "rows_mix" not in result:  # once: is a row's output its own?
            alone = _forward_backward(module, x[:1].detach().clone()).float()  # [1, K]
            again = _forward_backward(module, x[:1].detach().clone()).float()
            low = out.dtype in (torch.float16, torch.bfloat16)  # kernels differ per batch size by its rounding
            tolerance = (1e-2 if low else 1e-4) * (1.0 + float(out.float().abs().max()))
            if float((alone - again).abs().max()) <= tolerance:  # deterministic: else nothing to compare
                result["rows_mix"] = float((out[:1].float() - alone).abs().max()) > tolerance
                if result["rows_mix"]:
                    result["stopped"] = (f"a row's output depends on the other rows of its batch (batch {rows} "
                                         "against the row alone): it runs one row at a time")
                    break
        peak = _vm("VmPeak")
        result["batches"].append({"rows": rows, "seconds": seconds, "peak_rss": _vm("VmHWM"), "peak_vm": peak})
        if result["output_shape"] is None:
            result["output_shape"] = list(out.shape)
        if i + 1 < len(sizes):
            grow = sizes[i + 1] / rows
            if _time.monotonic() - start + 2 * grow * seconds > 0.8 * ARGS["time_budget"]:
                result["stopped"] = f"time: batch {sizes[i + 1]} would not fit the time limit"
                break
            if peak + (peak - vm_before) * (grow - 1) * 1.5 > LIMITS.get("as", float("inf")):
                result["stopped"] = f"memory: batch {sizes[i + 1]} would not fit the memory limit"
                break
    report(**result)
except BaseException as exc:
    report(ok=False, phase=phase, rows=rows, memory=_memory_error(exc), error=_one_line(exc))
    _sys.exit(1)
"""


@dataclass
class GraphProbe:
    """What the sandbox learnt about a graph.

    Attributes:
        max_batch_rows: the largest vetted batch size (None: not run, no spec).
        batches: per vetted size ``{rows, seconds, peak_rss, peak_vm}`` (bytes).
        output_shape: the output shape at the first size, e.g. ``[1, K]``.
        stopped: why vetting stopped below the configured size, or None.
        protections: what the sandbox applied (see `explain.loading.sandbox`).
        seconds: wall-clock seconds of the whole child run (start-up included).
        key: what was vetted (`vetting_key`), to tell whether a later spec needs a new run.
    """

    max_batch_rows: int | None
    batches: list[dict] = field(default_factory=list)
    output_shape: list[int] | None = None
    stopped: str | None = None
    protections: list[str] = field(default_factory=list)
    seconds: float = 0.0
    key: tuple | None = None
    rss_before: int = 0
    rows_mix: bool = False  # a row's output depends on the other rows of its batch: vetted (and run) at 1 only
    remembered: bool = False  # read back from a `VettingMemory`: vetted by an earlier process

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary, per-row peak memory (bytes) and seconds at the largest size included."""
        last = self.batches[-1] if self.batches else None
        return {
            "max_batch_rows": self.max_batch_rows,
            "batch_sizes": [b["rows"] for b in self.batches],
            "per_row_seconds": last["seconds"] / last["rows"] if last else None,
            "per_row_peak_bytes": max(0, last["peak_rss"] - self.rss_before) // last["rows"] if last else None,
            "stopped": self.stopped,
            "rows_mix": self.rows_mix,
            "seconds": round(self.seconds, 3),
            "protections": list(self.protections),
            **({"remembered": True} if self.remembered else {}),
        }


class VettingMemory(Protocol):
    """Where vetting outcomes outlive the process (`explain.workspace.vetting.VettingResults`):
    ``{"ok": True, "probe": {...}}`` or ``{"ok": False, "error", "reason", "hint"}`` by the file's
    sha256, the torch version and the digest of the vetting settings (`vetting_settings`)."""

    def get(self, sha256: str, torch_version: str, settings: str) -> dict[str, Any] | None: ...

    def put(self, sha256: str, torch_version: str, settings: str, outcome: dict[str, Any]) -> None: ...


log = logging.getLogger("glassbox.vetting")
#: refusals a remembered outcome may raise again, by class name
_REFUSALS = {cls.__name__: cls for cls in (UnsafeFile, TooLarge, IncompatibleInput, CorruptFile)}


def vetting_sizes(fixed: int | None = None, limit: int | None = None) -> list[int]:
    """Batch sizes to vet: ``[fixed]``, else powers of two up to ``limit`` (default `config.vetted_batch`)."""
    if fixed:
        return [int(fixed)]
    limit = max(1, int(limit or config.vetted_batch()))
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def vetting_key(spec: InputSpec | None, fixed: int | None) -> tuple | None:
    """What a probe depends on: shape, dtype, vocabulary size, fixed batch, configured size."""
    if spec is None:
        return None
    return (tuple(spec.input_shape), spec.dtype, len(spec.vocabulary or ()), fixed, config.vetted_batch())


def vet_graph(parts: Any, data: bytes, spec: InputSpec, memory: VettingMemory | None = None) -> GraphProbe | None:
    """Vet a loaded user's graph for ``spec`` (None for formats that need no vetting).

    A TorchScript archive was already probed while loading; that run is reused
    when it vetted the same spec, otherwise (the spec became known only now,
    e.g. inferred from sample inputs) the child runs again.

    Args:
        parts: the format loader's ``LoadedParts``.
        data: the file's bytes.
        spec: the resolved spec.
        memory: outcomes kept across processes (see `probe_graph`).
    """
    if parts.format not in UNTRUSTED_GRAPH_FORMATS:
        return None
    fixed = parts.fixed_batch_size
    done = parts.vetting
    if isinstance(done, GraphProbe) and done.key == vetting_key(spec, fixed) and done.max_batch_rows:
        return done
    if parts.format == "torchscript":
        return probe_torchscript(data, spec, memory)
    return probe_graph(data, EXPORT_CHILD_CODE, ".pt2", spec, fixed,
                       hint="Export the model again, or upload safetensors.", warmup=lambda: warmup_graph("export"),
                       preload=zygote_preload("export"), memory=memory)


def probe_torchscript(data: bytes, spec: InputSpec | None, memory: VettingMemory | None = None) -> GraphProbe:
    """Load a TorchScript archive with ``torch.jit.load`` in the sandbox and vet its batch sizes.

    Args:
        data: the archive bytes (already passed `explain.loading.script_check`).
        spec: what the model expects; None only loads the archive (no batch is vetted).
        memory: outcomes kept across processes (see `probe_graph`).

    Returns:
        The `GraphProbe` (``max_batch_rows`` None without a spec).

    Raises:
        See `probe_graph`.
    """
    return probe_graph(data, TORCHSCRIPT_CHILD_CODE, "TorchScript", spec,
                       hint="Upload a torch.export .pt2 or safetensors file instead.",
                       warmup=lambda: warmup_graph("torchscript"), preload=zygote_preload("torchscript"),
                       memory=memory)


@functools.cache
def warmup_graph(fmt: str) -> bytes:
    """A tiny trusted graph ([B, 4] -> [B, 2]) saved as ``torchscript`` or ``export`` (b"" if that fails).

    The child loads and differentiates it before locking itself down, so the
    imports torch makes lazily happen while the child may still read them.
    """
    import io

    import torch
    from torch import nn

    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    buf = io.BytesIO()
    try:
        if fmt == "torchscript":
            torch.jit.save(torch.jit.script(module), buf)
        else:
            batch = torch.export.Dim("batch")
            torch.export.save(torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},)), buf)
    except Exception:  # noqa: BLE001 - no warm-up: the child still works where it can read its imports
        return b""
    return buf.getvalue()


def probe_graph(data: bytes, loader_code: str, what: str, spec: InputSpec | None,
                fixed: int | None = None, hint: str | None = None,
                warmup: bytes | Callable[[], bytes] = b"", preload: str = "",
                memory: VettingMemory | None = None) -> GraphProbe:
    """Load ``data`` with ``loader_code`` in the sandbox and vet every batch size.

    The same bytes with the same spec and limits are vetted once per process:
    the outcome, success or refusal, is remembered (a child that could not
    start in time is not). With ``memory`` the outcome is also kept there, and
    read from there first, so no later process vets the same file again for the
    same torch version and settings (a run stopped by its wall-clock limit is
    not kept there: a busy machine is no verdict on the file).

    Args:
        data: the file's bytes.
        loader_code: child code defining ``load_graph(data) -> module``.
        what: the format as messages name it (``TorchScript``, ``.pt2``).
        spec: what the model expects; None only loads (nothing is vetted).
        fixed: the only batch size a static ``.pt2`` accepts.
        hint: what to upload instead, for refusals.
        warmup: a trusted graph of the same format ([B, 4] floats in), or a
            function making it, for a fresh child (see `warmup_graph`).
        preload: the zygote preload (`zygote_preload`); "" starts a fresh child.
        memory: vetting outcomes kept across processes (the workspace's).

    Raises:
        UnsafeFile: the child ran past its time or CPU limit.
        TooLarge: it ran out of memory.
        IncompatibleInput: the model fails at the first batch size.
        CorruptFile: the child crashed or could not load the file.
    """
    sizes = vetting_sizes(fixed)
    sha256, settings = digest_bytes(data), vetting_settings(loader_code, spec, fixed, sizes)
    cache_key = (sha256, settings)
    done = _DONE.get(cache_key)
    if done is None and memory is not None:
        done = _recall(memory, sha256, settings, spec, fixed)
        if done is not None:
            _remember(cache_key, done)
    if isinstance(done, GlassboxError):
        raise type(done)(done.reason, done.hint)
    if done is not None:
        return done
    args: dict[str, Any] = {
        "sizes": sizes, "time_budget": config.sandbox_timeout_s(),
        "spec": None if spec is None else {
            "input_shape": list(spec.input_shape), "dtype": spec.dtype, "vocab_size": len(spec.vocabulary or ())},
    }
    run = run_in_sandbox(loader_code + VET_CODE, data, args, warmup=warmup, preload=preload)
    if not run.ok:
        try:
            raise_refusal(run, what, spec, hint)
        except GlassboxError as exc:
            if run.timed_out != "startup":  # a busy server is no verdict on the file
                _remember(cache_key, exc)
            if not run.timed_out and memory is not None:
                _keep(memory, sha256, settings, {"ok": False, "error": type(exc).__name__,
                                                 "reason": exc.reason, "hint": exc.hint})
            raise
    final = run.final
    batches = list(final.get("batches") or [])
    probe = GraphProbe(
        max_batch_rows=batches[-1]["rows"] if batches else None, batches=batches,
        output_shape=final.get("output_shape"), stopped=final.get("stopped"), protections=run.protections,
        seconds=run.seconds, key=vetting_key(spec, fixed), rss_before=int(final.get("rss_before") or 0),
        rows_mix=bool(final.get("rows_mix")),
    )
    _remember(cache_key, probe)
    if memory is not None:
        kept = {k: v for k, v in asdict(probe).items() if k not in ("key", "remembered")}
        _keep(memory, sha256, settings, {"ok": True, "probe": kept})
    return probe


def vetting_settings(loader_code: str, spec: InputSpec | None, fixed: int | None, sizes: list[int]) -> str:
    """What a probe's outcome depends on besides the file and torch, as one digest: the child's
    code, the spec's shape, dtype and vocabulary size, the batch sizes and the sandbox's limits."""
    key = vetting_key(spec, fixed)
    parts = [digest_bytes((loader_code + VET_CODE).encode()), None if key is None else list(key), list(sizes),
             config.sandbox_timeout_s(), config.sandbox_memory_bytes()]
    return digest_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def _recall(memory: VettingMemory, sha256: str, settings: str, spec: InputSpec | None,
            fixed: int | None) -> GraphProbe | GlassboxError | None:
    try:
        outcome = memory.get(sha256, torch_version(), settings)
    except Exception as exc:  # noqa: BLE001 - a cache: vet again rather than fail
        log.info("vetting memory could not be read: %s", exc)
        return None
    if not isinstance(outcome, dict):
        return None
    if not outcome.get("ok"):
        cls = _REFUSALS.get(str(outcome.get("error")), CorruptFile)
        return cls(str(outcome.get("reason") or "The file was refused when it was vetted."), outcome.get("hint"))
    try:
        return GraphProbe(**outcome["probe"], key=vetting_key(spec, fixed), remembered=True)
    except (KeyError, TypeError):  # kept by another version of this code: vet again
        return None


def _keep(memory: VettingMemory, sha256: str, settings: str, outcome: dict[str, Any]) -> None:
    try:
        memory.put(sha256, torch_version(), settings, outcome)
    except Exception as exc:  # noqa: BLE001 - a cache
        log.info("vetting outcome could not be kept: %s", exc)


def _remember(key: tuple, outcome: Any) -> None:
    while len(_DONE) >= DONE_CACHE_SIZE:
        _DONE.pop(next(iter(_DONE)), None)
    _DONE[key] = outcome


def raise_refusal(run: SandboxRun, what: str, spec: InputSpec | None, hint: str | None = None) -> None:
    """Turn a failed sandbox run into the one-line error a user sees."""
    timeout = config.sandbox_timeout_s()
    rows = run.last_phase.get("rows") if run.last_phase.get("phase") == "batch" else None
    at = f" at a batch of {rows}" if rows else ""
    if run.timed_out == "startup":
        raise UnsafeFile(f"The sandbox that opens the {what} file did not start in time (the server is busy).",
                         "Try again in a moment.")
    if run.timed_out:
        raise UnsafeFile(f"Opening the {what} file did not finish within {timeout:.0f} s{at}, so it was stopped.", hint)
    final = run.final
    if run.returncode < 0 and not final:
        sig = signal_name(-run.returncode)
        if sig == "SIGXCPU":
            raise UnsafeFile(f"Opening the {what} file used up its CPU-time limit{at}, so it was stopped.", hint)
        if sig == "SIGKILL":
            raise TooLarge(f"Opening the {what} file was killed{at}, most likely for using too much memory.", hint)
        raise CorruptFile(
            f"The {what} file crashed the loader ({sig}); it was opened in a separate "
            "process, so nothing else was affected.",
            "The file is malformed; export the model again.",
        )
    error = str(final.get("error") or _first_stderr_line(run.stderr))
    if final.get("memory") or "MemoryError" in error:
        raise TooLarge(f"The {what} model needs more memory than the loader allows{at} ({error}).", hint)
    if final.get("phase") == "forward" and spec is not None:
        shape = [final.get("rows") or 1, *spec.input_shape]
        raise IncompatibleInput(f"The {what} model fails on an input of shape {shape} ({error}).",
                                "Check the spec's input_shape and dtype.")
    raise CorruptFile(f"The {what} file cannot be loaded ({error}).")


def _first_stderr_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "the loader exited without a report"
