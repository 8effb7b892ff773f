"""Capture a model as a functional ATen graph, whatever file it came from.

Rule-based explainers (DeepLift, SHAP DeepExplainer) must see every
nonlinearity. Module hooks miss functional calls, break on a reused or
in-place ``nn.ReLU`` and do not exist on TorchScript or ``torch.export``
programs, so these explainers interpret a graph instead. `captured_graph`
turns any `LoadedModel` into one ``torch.fx.GraphModule`` over ATen ops,
functionalised (no ``relu_`` / ``add_``), without touching the user's model:

- eager ``nn.Module`` -> ``torch.export.export`` with a dynamic batch (a
  static batch when the model refuses a dynamic one);
- ``.pt2`` -> its ``ExportedProgram``, functionalised with
  ``run_decompositions({})``;
- TorchScript -> ``TS2EPConverter`` (scripted control flow it cannot convert
  falls back to ``make_fx`` tracing at a fixed batch size).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from explain.errors import IncompatibleInput, one_line
from explain.model import LoadedModel

_log = logging.getLogger(__name__)

#: Method to suggest when no graph can be captured.
FALLBACK_METHOD = "integrated_gradients"


@dataclass
class CapturedGraph:
    """A functional ATen graph equivalent to a model.

    Attributes:
        module: the graph; ``torch.fx.Interpreter(module).run(x)`` computes
            the model's output for a batch ``x``.
        how: how it was captured (shown in notes).
        fixed_batch: the only batch size the graph accepts, None if dynamic.
        notes: remarks worth showing the user.
        cached: True when it came from `GRAPH_CACHE` rather than a new capture.
    """

    module: fx.GraphModule
    how: str
    fixed_batch: int | None = None
    notes: list[str] = field(default_factory=list)
    cached: bool = False


def is_capturable_format(model: LoadedModel) -> bool:
    """Cheap check: can `captured_graph` be attempted on this model at all?"""
    if model.format == "torchscript":
        return isinstance(model.module, torch.jit.ScriptModule)
    if model.format == "export":
        return model.exported_program is not None or isinstance(model.module, fx.GraphModule)
    return isinstance(model.module, torch.nn.Module)


class _GraphCache:
    """The last few captured graphs, keyed by model object and input signature.

    Capturing costs seconds (``torch.export``), explaining a few rows far
    less, and a page asks again for the same model on every rerun. An entry
    dies with its module (weak reference). A stale graph (weights changed
    since) is caught by the callers' output check, which calls `forget`.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: OrderedDict[tuple, tuple[weakref.ref, CapturedGraph]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def key(model: LoadedModel, example: torch.Tensor) -> tuple:
        return (id(model.module), model.format, model.sha256, str(model.device),
                tuple(example.shape[1:]), str(example.dtype), model.fixed_batch_size)

    def get(self, model: LoadedModel, example: torch.Tensor) -> CapturedGraph | None:
        return self.get_keyed(self.key(model, example), model.module)

    def put(self, model: LoadedModel, example: torch.Tensor, captured: CapturedGraph) -> None:
        self.put_keyed(self.key(model, example), model.module, captured)

    def get_keyed(self, key: tuple, owner: Any) -> CapturedGraph | None:
        """The graph stored under ``key`` while ``owner`` (the module it was captured from) lives;
        ``key[0]`` is ``id(owner)`` (what `forget` matches)."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or entry[0]() is not owner:
                return None
            self.entries.move_to_end(key)
            return entry[1]

    def put_keyed(self, key: tuple, owner: Any, captured: CapturedGraph) -> None:
        try:
            ref = weakref.ref(owner, lambda _r: self._drop(key))
        except TypeError:  # not weak-referenceable: do not cache
            return
        with self.lock:
            self.entries[key] = (ref, captured)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def forget(self, model: LoadedModel) -> None:
        with self.lock:
            for key in [k for k in self.entries if k[0] == id(model.module)]:
                del self.entries[key]

    def _drop(self, key: tuple) -> None:
        with self.lock:
            self.entries.pop(key, None)


GRAPH_CACHE = _GraphCache()
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def captured_graph(model: LoadedModel, example: torch.Tensor, reuse: bool = True) -> Iterator[CapturedGraph]:
    """Capture ``model`` as a graph for the duration of a ``with`` block.

    The user's module is left as it was: its train/eval flag is restored (it
    is switched to eval only while exporting a module left in train mode) and
    no hook or attribute is added to it.

    Args:
        model: the loaded model.
        example: a batch of model-ready inputs [S, ...] on the model's device;
            its batch size is the fixed batch of a static fallback capture.
        reuse: take the graph from `GRAPH_CACHE` when it holds one for this
            model object and input signature (``captured.cached`` says so).

    Raises:
        IncompatibleInput: no graph can be captured; the reason says why and
            the hint names a method that works.
    """
    cached = GRAPH_CACHE.get(model, example) if reuse else None
    if cached is not None:
        yield CapturedGraph(cached.module, cached.how, cached.fixed_batch, list(cached.notes), cached=True)
        return
    module = model.module
    training = model.is_eager and isinstance(module, torch.nn.Module) and module.training
    try:
        if training:
            module.train(False)
        with _CAPTURE_LOCK, warnings.catch_warnings():  # export's tracing state is process-global
            warnings.simplefilter("ignore")
            captured = _capture(model, example)
    finally:
        if training:
            module.train(True)
    GRAPH_CACHE.put(model, example, captured)
    yield captured


def _capture(model: LoadedModel, example: torch.Tensor) -> CapturedGraph:
    if model.format == "export":
        return _capture_export(model, example)
    if model.format == "torchscript":
        return _capture_torchscript(model.module, example)
    return _capture_eager(model.module, example)


def _refuse(what: str, exc: BaseException) -> IncompatibleInput:
    detail = one_line(exc, 200, typed=False)
    return IncompatibleInput(
        f"Cannot capture this {what} as a graph for rule-based attribution ({detail}).",
        f"Use {FALLBACK_METHOD} instead.",
    )


def _dynamic_example(example: torch.Tensor) -> torch.Tensor:
    """At least 2 rows so that export does not specialise the batch to 1."""
    return example if example.shape[0] >= 2 else torch.cat([example, example])


def _functional_module(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """The program's graph, functionalised (``relu_`` -> ``relu``, ``add_`` -> ``add``).

    ``run_decompositions({})`` functionalises without decomposing; it is
    skipped (about a second) when the graph mutates nothing.
    """
    if any(_is_inplace(n) for n in ep.graph.nodes):
        ep = ep.run_decompositions({})
    return ep.module()


def _is_inplace(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and any(
        a.alias_info is not None and a.alias_info.is_write for a in schema.arguments
    )


def _batch_of(ep: torch.export.ExportedProgram) -> int | None:
    """The static batch size of the first user input, None when symbolic."""
    name = ep.graph_signature.user_inputs[0]
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name)
    dim = node.meta["val"].shape[0]
    return dim if isinstance(dim, int) else None


def _capture_eager(module: torch.nn.Module, example: torch.Tensor) -> CapturedGraph:
    batch = torch.export.Dim("batch")
    try:
        ep = torch.export.export(module, (_dynamic_example(example),), dynamic_shapes=({0: batch},))
        return CapturedGraph(_functional_module(ep), "torch.export (dynamic batch)", _batch_of(ep))
    except Exception as exc:  # noqa: BLE001 - any export failure means: try static
        _log.info("dynamic export failed: %s", exc)
    try:
        ep = torch.export.export(module, (example,))
    except Exception as exc:  # noqa: BLE001
        raise _refuse("model", exc) from None
    return CapturedGraph(_functional_module(ep), "torch.export (static batch)", int(example.shape[0]))


def _capture_export(model: LoadedModel, example: torch.Tensor) -> CapturedGraph:
    ep = model.exported_program
    if ep is None:
        return _capture_eager(model.module, example)
    try:
        gm = _functional_module(ep)
    except Exception as exc:  # noqa: BLE001
        raise _refuse("exported program", exc) from None
    gm = _on_device(gm, model.device)
    fixed = _batch_of(ep)
    notes = [f"the .pt2 program has a static batch of {fixed}"] if fixed else []
    return CapturedGraph(gm, "torch.export program (.pt2)", fixed, notes)


def _capture_torchscript(module: Any, example: torch.Tensor) -> CapturedGraph:
    from torch._export.converter import TS2EPConverter

    try:
        ep = TS2EPConverter(module, (_dynamic_example(example),)).convert()
        gm = _functional_module(ep)
        probe = torch.cat([_dynamic_example(example), example[:1]])  # a batch size not seen in conversion
        with torch.no_grad():
            if _agree(torch.fx.Interpreter(gm).run(probe), module(probe)):
                return CapturedGraph(gm, "TorchScript -> torch.export (TS2EPConverter)", None)
        _log.info("TS2EPConverter graph does not reproduce the module on another batch size")
    except Exception as exc:  # noqa: BLE001 - e.g. 'failed for node prim::If'
        _log.info("TS2EPConverter failed: %s", exc)
    try:
        from torch.fx.experimental.proxy_tensor import make_fx

        traced = torch.func.functionalize(lambda x: module(x), remove="mutations_and_views")
        gm = make_fx(traced, tracing_mode="real")(example)
    except Exception as exc:  # noqa: BLE001
        raise _refuse("TorchScript module", exc) from None
    note = (
        "TorchScript control flow was traced for these inputs (make_fx): "
        f"fixed batch {example.shape[0]}; outputs are checked against the module per batch"
    )
    return CapturedGraph(gm, "TorchScript -> make_fx trace", int(example.shape[0]), [note])


def first_tensor(out: Any) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, or the first tensor of a tuple/list)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    raise IncompatibleInput(f"The model returned {type(out).__name__}, not a tensor of logits.")


def _agree(a: Any, b: Any, tol: float = 1e-4) -> bool:
    a, b = first_tensor(a).float(), first_tensor(b).float()
    return a.shape == b.shape and bool(((a - b).abs() <= tol * (1 + b.abs().max())).all())


def _on_device(gm: fx.GraphModule, device: torch.device) -> fx.GraphModule:
    """The graph with its parameters on ``device`` (a moved copy if they are elsewhere)."""
    tensors = list(gm.parameters()) + list(gm.buffers())
    if all(t.device == device for t in tensors):
        return gm
    import copy

    return copy.deepcopy(gm).to(device)
