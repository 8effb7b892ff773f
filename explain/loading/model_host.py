"""The child's side of a model process (`explain.loading.model_process`): it runs locked down.

`serve` is the child's life after `explain.loading.sandbox.PRELUDE`: lock down,
load the graph (``torch.jit.load``, or the ``.pt2`` reader), report what it is,
then answer ``forward`` / ``backward`` / ``call`` requests until the server hangs
up. `warm_up` runs once in the zygote, before any fork: it imports and
exercises, on tiny trusted graphs, what a request may need, because a locked
child may no longer read the Python installation.
"""
from __future__ import annotations

import collections
import importlib
import io
import json
import math
import os
import pickle
import resource
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from explain.errors import GlassboxError, one_line
from explain.loading.model_process import PENDING_GRAPHS, _Callback, _ModelMarker
from explain.loading.model_wire import WIRE_DTYPES, describe, encode_result, to_wire


def warm_up() -> None:
    """Import and exercise, on trusted tiny graphs, what a model process may run after its lock."""
    import zoneinfo  # noqa: F401 - pandas (through shap) reads time zones lazily

    import shap  # noqa: F401 - shap_gradient

    import explain.output.layer_importance  # noqa: F401
    import explain.output.methods  # noqa: F401 - every explainer
    import explain.output.metrics  # noqa: F401
    import explain.structure.activations  # noqa: F401
    import explain.structure.attention  # noqa: F401
    import explain.structure.layers  # noqa: F401
    from explain.loading.export import load_export_parts
    from explain.loading.vetting import warmup_graph
    from explain.model import LoadedModel
    from explain.spec import InputSpec

    for fmt in ("torchscript", "export"):
        data = warmup_graph(fmt)
        if not data:
            continue
        try:
            module = torch.jit.load(io.BytesIO(data)).eval() if fmt == "torchscript" else load_export_parts(data).module
            spec = InputSpec(modality="tabular", input_shape=[4], class_names=["a", "b"])
            model = LoadedModel(module=module, format=fmt, sha256="warm-up", spec=spec)
            x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
            from explain.output.methods.base import get_method
            from explain.structure.layers import build_layer_table

            for name in ("integrated_gradients", "smoothgrad", "gradient_shap", "deeplift", "shap_deep",
                         "shap_gradient", "occlusion", "feature_ablation"):
                try:
                    get_method(name).explain(model, x, use_cache=False)
                except Exception:  # noqa: BLE001 - a warm-up, not a check
                    pass
            try:
                build_layer_table(model, x)
            except Exception:  # noqa: BLE001
                pass
        except Exception:  # noqa: BLE001
            pass


def warm_up_huggingface() -> None:
    """In the zygote of Hugging Face model processes: a tiny BERT built from memory as
    `explain.loading.huggingface` builds one, explained and attended (transformers' lazy imports)."""
    try:
        _warm_up_huggingface()
    except Exception:  # noqa: BLE001 - a warm-up, not a check
        pass


def _warm_up_huggingface() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    import explain.generation.attention  # noqa: F401 - a causal LM's requests (explain.generation)
    import explain.generation.attribution  # noqa: F401
    import explain.generation.continuation  # noqa: F401
    import explain.generation.logit_lens  # noqa: F401
    from explain.loading.huggingface import HFClassifier
    from explain.model import LoadedModel
    from explain.output.methods.base import get_method
    from explain.spec import InputSpec
    from explain.structure.attention import capture_attention

    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=2, max_position_embeddings=16)
    state = BertForSequenceClassification(cfg).state_dict()
    bert, _ = BertForSequenceClassification.from_pretrained(
        None, config=cfg, state_dict=state, attn_implementation="eager", output_loading_info=True)
    spec = InputSpec(modality="text", input_shape=[6], dtype="int64", class_names=["a", "b"],
                     vocabulary=[f"t{i}" for i in range(20)])
    model = LoadedModel(module=HFClassifier(bert.eval(), "text"), format="huggingface", sha256="warm-up", spec=spec)
    ids = np.array([[2, 5, 7, 9, 0, 0]], dtype=np.int64)
    for name in ("integrated_gradients", "deeplift", "layer_integrated_gradients"):
        try:
            get_method(name).explain(model, ids, use_cache=False)
        except Exception:  # noqa: BLE001 - a warm-up, not a check
            pass
    capture_attention(model, ids)


class StateChanged(GlassboxError):
    """The graph changed its own weights, buffers or attributes while it ran (it could keep an input)."""


def _start_threads() -> None:
    """Run a parallel operation so the intra-op pool exists before ``RLIMIT_NPROC`` forbids new threads."""
    a = torch.randn(256, 256)
    (a @ a).sum()
    torch.randn(1 << 18).exp().sum()


def _fingerprint(value: Any, depth: int = 0) -> Any:
    """What identifies a module attribute's state: a tensor's identity, storage and version counter."""
    if isinstance(value, torch.Tensor):
        return ("T", value._version, value.data_ptr() if value.layout == torch.strided else 0, tuple(value.shape))
    if depth > 4:
        return type(value).__name__
    if isinstance(value, (list, tuple)):
        return ("L", len(value), tuple(_fingerprint(v, depth + 1) for v in list(value)[:256]))
    if isinstance(value, dict):
        return ("D", len(value), tuple((str(k), _fingerprint(v, depth + 1)) for k, v in list(value.items())[:256]))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def state_fingerprint(module: Any) -> Any:
    """Every attribute of a TorchScript module (recursively) or parameter / buffer of a graph module."""
    if isinstance(module, torch.jit.ScriptModule):
        attrs = torch._C._jit_debug_module_iterators(module._c)["named_attributes_r"]
        return tuple((name, _fingerprint(value)) for name, value in attrs if not isinstance(value, torch.ScriptObject)
                     and not hasattr(value, "_c"))
    items = [*module.named_parameters(), *module.named_buffers()]
    return tuple((name, _fingerprint(value)) for name, value in items)


class _ChildModel:
    """The child's graph and the `LoadedModel` built on it for the server's current state."""

    def __init__(self, data: bytes, fmt: str):
        from explain.loading.export import load_export_parts, signature_guess, static_batch_size

        self.format = fmt
        self.program = None
        if fmt == "torchscript":
            self.module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
            fixed, signature = None, None
        elif fmt == "huggingface":
            from explain.loading.huggingface import load_huggingface_parts

            self.module = load_huggingface_parts(data).module
            fixed, signature = None, None
        else:
            parts = load_export_parts(data)
            self.module, self.program = parts.module, parts.exported_program
            fixed = static_batch_size(self.program)
            signature = signature_guess(self.program)
        self.fixed = fixed
        self.signature = signature
        from explain.model import graph_float_dtype

        self.input_dtype = graph_float_dtype(self.module)  # a half-precision graph takes its float inputs so
        # a user's graph may not keep state between requests (Hugging Face models are transformers' code)
        self.watched = fmt in ("torchscript", "export")
        self.fingerprint = state_fingerprint(self.module) if self.watched else None
        self._model = None
        self._state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the graph for ``x`` as the server sends it (float32 or int64): a half-precision
        graph gets its float inputs cast to its dtype, and its logits come back in float32."""
        from explain.model import cast_float_input

        y = _logits(self.module(cast_float_input(x, self.input_dtype)))
        return y.float() if self.input_dtype is not None else y

    def check_state(self) -> None:
        """Raise `StateChanged` when the graph changed any of its own state since it was loaded."""
        if self.watched and state_fingerprint(self.module) != self.fingerprint:
            raise StateChanged("The model changed its own weights or buffers while it ran, so it could carry one "
                               "request's inputs into another; its process was stopped.",
                               "Export the model in eval mode with no state kept between calls.")

    def info(self) -> dict[str, Any]:
        from explain.loading.loader import guess_from_module

        def plain(guess: Any) -> dict | None:
            if guess is None:
                return None
            return {"input_shape": [None if d is None else int(d) for d in guess.input_shape or ()],
                    "dtype": guess.dtype, "source": guess.source, "modality": guess.modality}

        try:
            params = int(sum(p.numel() for p in self.module.parameters()))
        except Exception:  # noqa: BLE001
            params = 0
        lm = getattr(self.module, "model", None) if self.format == "export" else None
        causal = lm.signature.to_dict() if lm is not None and getattr(lm, "full_forward", False) else None
        return {"fixed_batch_size": self.fixed, "parameters": params, "signature": plain(self.signature),
                "module_guess": plain(guess_from_module(self.module)), "causal_lm": causal}

    def model(self, key: str, state: dict | None) -> Any:
        """The `LoadedModel` for the server's state ``key`` (``state`` None: the one sent before)."""
        from explain.model import LoadedModel
        from explain.spec import InputSpec

        if state is None and key != self._state:
            raise RuntimeError("the model process lost the model's state; try again")
        if self._model is None or key != self._state:
            extra = dict(state.get("extra") or {})
            if self.input_dtype is not None:
                extra["input_dtype"] = self.input_dtype
            model = LoadedModel(
                module=self.module, format=self.format, sha256=state.get("sha256") or "", name=state.get("name") or "model",
                spec=InputSpec.from_dict(state["spec"]), fixed_batch_size=self.fixed,
                architecture=state.get("architecture"),
                exported_program=self.program, max_batch_rows=state.get("max_batch_rows"), extra=extra)
            if self._model is not None:  # keep what the model caches (unflattened program)
                model._unflattened = self._model._unflattened
            self._model, self._state = model, key
        return self._model


def _read_exact_child(stream: Any, n: int) -> bytes:
    buf = stream.read(n) if n else b""
    if len(buf) != n:
        raise EOFError
    return buf


def serve(data: bytes, args: dict, lock_down: Callable, report: Callable, channel: Any, nproc: bool = False) -> None:
    """The child's life: lock down, load the graph, answer requests until the server hangs up.

    ``nproc``: no new process or thread once the thread pools started (``lock_down`` must not forbid them:
    they start after it, so that every thread runs under the lock)."""
    import traceback

    torch.set_num_threads(int(args.get("threads") or 1))
    if isinstance(args.get("cuda_visible"), str):  # its GPUs (the zygote never started CUDA)
        os.environ["CUDA_VISIBLE_DEVICES"] = args["cuda_visible"]
    for name in args.get("imports") or []:  # named by the server (trusted): read before the lock
        if isinstance(name, str) and name.startswith("transformers.models."):
            importlib.import_module(name)
    protections = lock_down()
    # the thread pools, under the lock: no_new_privs, Landlock and the network namespace bind only the
    # thread that set them and threads it starts later; a pool started before ran the model's ops outside
    _start_threads()
    if nproc:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
            protections.append("rlimit-nproc")
        except (ValueError, OSError):
            pass
    report(phase="ready", protections=protections)
    out = channel.buffer

    def send(header: dict, blobs: list[bytes] = ()) -> None:
        channel.flush()
        out.write(json.dumps(header).encode() + b"\n")
        for blob in blobs:
            out.write(blob)
        out.flush()

    try:
        child = _ChildModel(data, args["format"])
        del data
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # loaded: no new thread or process from now on
        send({"ok": True, "info": child.info()})
    except BaseException as exc:  # noqa: BLE001 - reported, then the child ends
        send(_error_reply(exc))
        return
    pending: collections.OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()
    counter = 0
    stdin = sys.stdin.buffer
    while True:
        try:
            n = int.from_bytes(_read_exact_child(stdin, 8), "little")
            header = json.loads(_read_exact_child(stdin, n))
            arrays = []
            for meta in header.get("arrays") or []:
                dtype = np.dtype(WIRE_DTYPES[meta["dtype"]])
                shape = tuple(int(d) for d in meta["shape"])
                raw = _read_exact_child(stdin, math.prod(shape) * dtype.itemsize)
                arrays.append(torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(shape).copy()))
            payload = _read_exact_child(stdin, int(header.get("payload") or 0))
        except EOFError:
            return
        try:
            op = header.get("op")
            if op == "forward":
                x = arrays[0]
                if header.get("keep"):
                    x.requires_grad_(x.is_floating_point())
                    with torch.enable_grad():
                        y = child.forward(x)
                    counter += 1
                    pending[counter] = (x, y)
                    while len(pending) > PENDING_GRAPHS:
                        pending.popitem(last=False)
                    reply_arrays, extra = [y.detach()], {"handle": counter}
                else:
                    with torch.no_grad():
                        y = child.forward(x)
                    reply_arrays, extra = [y], {}
                child.check_state()
                blobs = [to_wire(t) for t in reply_arrays]
                send({"ok": True, **extra, "arrays": [describe(b) for b in blobs]}, [b.tobytes() for b in blobs])
            elif op == "backward":
                x, y = pending.pop(int(header["handle"]))
                (g,) = torch.autograd.grad(y, x, arrays[0].to(y.dtype))
                child.check_state()
                b = to_wire(g)
                send({"ok": True, "arrays": [describe(b)]}, [b.tobytes()])
            elif op == "call":
                tree, result_arrays = _run_call(child, payload, send)
                child.check_state()
                body = json.dumps({"tree": tree, "arrays": [describe(a) for a in result_arrays]}).encode()
                send({"ok": True, "tree_bytes": len(body)}, [body, *(a.tobytes() for a in result_arrays)])
            else:
                send({"ok": False, "error": f"unknown request {op!r}"})
        except StateChanged as exc:  # the graph kept something of this request: nobody else may see it
            send({**_error_reply(exc), "fatal": True})
            return
        except BaseException as exc:  # noqa: BLE001 - one failed request; the child serves on
            try:
                send(_error_reply(exc))
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                return


def _run_call(child: _ChildModel, payload: bytes, send: Callable[..., None]) -> tuple[Any, list[np.ndarray]]:
    """Run a ``call`` request: the library function on the child's model; its result for the wire."""
    size = int.from_bytes(payload[:8], "little")
    key, state = pickle.loads(payload[8: 8 + size])  # from the server (never a user's file): trusted
    module_name, qualname, call_args, call_kwargs = pickle.loads(payload[8 + size:])
    model = child.model(key, state)

    def progress(index: int) -> Callable[..., None]:
        return lambda *a: send({"progress": index, "args": [_plain(v) for v in a]})

    def unswap(value: Any) -> Any:
        if isinstance(value, _ModelMarker):
            return model
        if isinstance(value, _Callback):
            return progress(value.index)
        return value

    func: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        func = getattr(func, part)
    func = getattr(func, "__wrapped__", func)  # the function itself, not its dispatcher
    result = func(*(unswap(a) for a in call_args), **{k: unswap(v) for k, v in call_kwargs.items()})
    return encode_result(result)


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)[:100]


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returns {type(out).__name__}, not a tensor")
    return out


def _error_reply(exc: BaseException) -> dict[str, Any]:
    text = str(exc)
    memory = isinstance(exc, MemoryError) or "alloc" in text.lower() or "out of memory" in text.lower()
    if isinstance(exc, GlassboxError):
        return {"ok": False, "error_class": type(exc).__name__, "error": exc.reason, "hint": exc.hint,
                "memory": False}
    allocate = next((line.strip() for line in text.splitlines() if "allocate" in line.lower()), None) if memory else None
    error = one_line(f"{type(exc).__name__}: {allocate}") if allocate else one_line(exc)
    return {"ok": False, "error_class": None, "memory": memory, "error": error}
