"""Run a model once and record, per module, its output shape, statistics and FLOPs.

One probe serves the layer table (shapes, FLOPs) and the activation view
(mean, std, zeros). Each model format needs its own way in:

- eager ``nn.Module``: forward hooks (in a ``with`` block, always removed) and
  ``FlopCounterMode``'s own per-module accounting;
- ``torch.export`` programs: an ``fx.Interpreter`` over the graph; each node is
  attributed to modules through its ``nn_module_stack`` metadata and its FLOPs
  are the counter's increase while it runs;
- TorchScript: see :mod:`explain.structure.script_probe` (no hooks exist there).

Module names are qualified names as ``named_modules()`` gives them; the root
is ``""``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

from explain.errors import IncompatibleInput, one_line
from explain.kernels import no_mha_fastpath
from explain.loading.export_lm import ExportedLMModule
from explain.model import LoadedModel
from explain.structure.measures import ActivationStats, ModuleProbe, make_flop_counter, summarise_tensor

aten = torch.ops.aten

def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module output (tensor, tuple, list or dict)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def short_type(type_name: str) -> str:
    """``torch.nn.modules.linear.Linear`` -> ``Linear``."""
    return type_name.rsplit(".", 1)[-1].strip("'>")


@contextlib.contextmanager
def forward_hooks(module: nn.Module, make_hook) -> Iterator[None]:
    """Register ``make_hook(name)`` as forward hook on every submodule; always removed."""
    handles = []
    try:
        for name, sub in module.named_modules():
            handles.append(sub.register_forward_hook(make_hook(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def probe_modules(model: LoadedModel, inputs: torch.Tensor) -> ModuleProbe:
    """Run ``model`` on ``inputs`` once and describe every module.

    Args:
        model: any loaded model (eager, TorchScript or ``.pt2``).
        inputs: a model-ready batch on the model's device.

    Raises:
        IncompatibleInput: when the model raises on these inputs.
    """
    if model.format == "torchscript":
        from explain.structure.script_probe import probe_script_modules

        return probe_script_modules(model.module, inputs)
    if isinstance(model.module, ExportedLMModule):  # a causal .pt2's program itself: ids [N, L] -> logits [N, L, V]
        return _probe_graph(model.module.model.program, *model.module.model.program_args(inputs))
    if model.format == "export":
        return _probe_graph(model.module, inputs)
    return _probe_eager(model.module, inputs)


# ---------------------------------------------------------------------------
# eager
# ---------------------------------------------------------------------------
def _probe_eager(module: nn.Module, x: torch.Tensor) -> ModuleProbe:
    types = {name: type(m).__name__ for name, m in module.named_modules()}
    calls: dict[str, int] = {}
    stats: dict[str, ActivationStats] = {}

    def make_hook(name: str):
        def hook(_mod, _args, output):
            calls[name] = calls.get(name, 0) + 1
            t = first_tensor(output)
            if t is not None:
                with _disable_current_modes():  # statistics are not the model's FLOPs (and faster so)
                    stats[name] = summarise_tensor(t, calls[name])

        return hook

    counter = make_flop_counter()
    with forward_hooks(module, make_hook), no_mha_fastpath(), torch.no_grad(), counter:
        _run(module, x)
    root_label = type(module).__name__
    flops: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root_label else key[len(root_label) + 1 :] if key.startswith(root_label + ".") else key
        flops[name] = flops.get(name, 0) + int(sum(per_op.values()))
    names = list(types)  # definition order, root first
    for name in names:
        flops.setdefault(name, 0)
    return ModuleProbe(names=names, types=types, stats=stats, flops=flops, total_flops=int(counter.get_total_flops()))


def _run(module, x: torch.Tensor) -> Any:
    try:
        return module(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise IncompatibleInput(f"The model raised on these inputs: {one_line(exc, 200, typed=False)}") from None


# ---------------------------------------------------------------------------
# torch.export graphs
# ---------------------------------------------------------------------------
def node_module_paths(node: torch.fx.Node) -> list[tuple[str, str]]:
    """``[(qualified name, type), ...]`` from outermost to innermost module of a graph node."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for path, type_name in stack.values():
        if not isinstance(path, str) or path.startswith("_empty"):
            continue
        out.append((_clean_path(path), short_type(str(type_name))))
    return out


def _clean_path(path: str) -> str:
    # strict-mode export writes L['self'].encoder.layers[0]; non-strict writes encoder.layers.0
    path = path.replace("L['self']", "").replace("L__self__", "")
    path = path.replace("[", ".").replace("]", "").replace("'", "").replace('"', "")
    return path.strip(".").replace("..", ".")


class _RecordingInterpreter(torch.fx.Interpreter):
    """Runs a graph, keeping every node's value and FLOPs."""

    def __init__(self, gm: torch.fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.values: dict[torch.fx.Node, Any] = {}
        self.node_flops: dict[torch.fx.Node, int] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        before = self.counter.get_total_flops()
        value = super().run_node(n)
        self.node_flops[n] = int(self.counter.get_total_flops() - before)
        if isinstance(value, torch.Tensor):
            self.values[n] = value
        return value


def _probe_graph(gm: torch.fx.GraphModule, *args: torch.Tensor) -> ModuleProbe:
    counter = make_flop_counter()
    interp = _RecordingInterpreter(gm, counter)
    with torch.no_grad(), counter:
        try:
            interp.run(*args)
        except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
            raise IncompatibleInput(f"The model raised on these inputs: {one_line(exc, 200, typed=False)}") from None
    root_type = type(gm).__name__
    types: dict[str, str] = {}
    order: list[str] = [""]
    flops: dict[str, int] = {"": 0}
    scope_of: dict[torch.fx.Node, set[str]] = {}
    inside: dict[str, list[torch.fx.Node]] = {}
    for n in gm.graph.nodes:
        paths = node_module_paths(n)
        names = {p for p, _ in paths}
        scope_of[n] = names | {""}
        if n in interp.values:
            for p in names:
                inside.setdefault(p, []).append(n)
        for p, t in paths:
            if p == "":
                root_type = t
                continue
            types.setdefault(p, t)
            if p not in order:
                order.append(p)
        for p in scope_of[n]:
            flops[p] = flops.get(p, 0) + interp.node_flops.get(n, 0)
    types[""] = root_type
    # modules that own parameters but never show up as a node's module (e.g. containers)
    for pname, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        parts = pname.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in types:
                types[prefix] = "Module"
                order.append(prefix)
                flops.setdefault(prefix, 0)
    _name_containers(types)
    stats: dict[str, ActivationStats] = {}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    for name in order:
        node = _module_output_node(name, inside.get(name, []), scope_of, interp.values, out_node)
        if node is not None:
            stats[name] = summarise_tensor(interp.values[node])
    return ModuleProbe(names=order, types=types, stats=stats, flops=flops, total_flops=int(counter.get_total_flops()))


def _name_containers(types: dict[str, str]) -> None:
    """Graph-only modules (``Module``) whose children are numbered are ``ModuleList``s."""
    for name, t in types.items():
        if t != "Module":
            continue
        children = [c[len(name) + 1 :] for c in types if c.startswith(name + ".") and "." not in c[len(name) + 1 :]]
        if children and all(c.isdigit() for c in children):
            types[name] = "ModuleList"


def _module_output_node(name, inside, scope_of, values, out_node) -> torch.fx.Node | None:
    """The last tensor node of ``inside`` (the module's nodes, in order) whose value leaves it."""
    if name == "":
        args = out_node.args[0]
        first = args[0] if isinstance(args, (tuple, list)) and args else args
        return first if isinstance(first, torch.fx.Node) and first in values else None
    for n in reversed(inside):
        if any(u.op == "output" or name not in scope_of.get(u, ()) for u in n.users):
            return n
    return inside[-1] if inside else None
