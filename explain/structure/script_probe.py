"""Per-module shapes, statistics and FLOPs for TorchScript models, without hooks.

A loaded TorchScript module accepts no Python hooks. Its inlined forward graph
does know, for every node, which module instance the node came from
(``Node.getModuleHierarchy()``). So we copy that graph, return every
top-level tensor value as an extra output, run the copy once and attribute
each value to its module: a module's output is its last value that is used
outside it.

Limits, reported in ``ModuleProbe.notes``: values computed inside TorchScript
control flow (``prim::If`` / ``prim::Loop`` bodies) are only visible through the
control-flow node's outputs, so a module whose whole computation sits in a
branch gets its output from that branch node when it is attributed to the
module, and otherwise an unknown shape. FLOPs are attributed per module only
when the top-level nodes account for all FLOPs the run counted.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from explain.errors import IncompatibleInput, one_line
from explain.kernels import no_mha_fastpath
from explain.structure.measures import ActivationStats, ModuleProbe, make_flop_counter, summarise_tensor

_SEGMENT = re.compile(r"([^.()]+)\(([^()]*)\)")
_SKIP_SEGMENTS = ("SELF", "UNKNOWN_INSTANCE")
_CONTAINERS = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")
#: node kinds whose FLOPs FlopCounterMode counts (after decomposition)
_FLOP_KINDS = {
    "aten::linear", "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::convolution",
    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::matmul", "aten::mm", "aten::bmm", "aten::addmm",
    "aten::baddbmm", "aten::einsum", "aten::scaled_dot_product_attention", "aten::_transformer_encoder_layer_fwd",
    "aten::_native_multi_head_attention",
}


def script_module_types(module: torch.jit.ScriptModule) -> dict[str, str]:
    """name -> original Python class name of every submodule of a ScriptModule."""
    return {name: getattr(m, "original_name", type(m).__name__) for name, m in module.named_modules()}


def parse_hierarchy(text: str) -> list[str]:
    """``layer1(BasicBlock).conv1(Conv2d).SELF(Conv2d)`` -> ``["layer1", "conv1"]``."""
    return [name for name, _ in _SEGMENT.findall(text or "") if name not in _SKIP_SEGMENTS]


class _NameResolver:
    """Maps TorchScript call-hierarchy segments to qualified module names.

    The hierarchy lists modules whose forward ran; containers without a
    forward (``ModuleList``) are skipped there, so ``encoder.0`` may mean
    ``encoder.layers.0``.
    """

    def __init__(self, root: torch.jit.ScriptModule):
        self.root = root
        self.cache: dict[tuple[str, ...], str | None] = {(): ""}
        self.modules = dict(root.named_modules())

    def resolve(self, segments: list[str]) -> str | None:
        key = tuple(segments)
        if key in self.cache:
            return self.cache[key]
        parent = self.resolve(segments[:-1])
        found = None if parent is None else self._find_child(parent, segments[-1])
        self.cache[key] = found
        return found

    def _find_child(self, parent: str, seg: str) -> str | None:
        frontier = [parent]
        for _ in range(3):  # look through up to two container levels
            nxt = []
            for name in frontier:
                for child_name, _ in self.modules[name].named_children():
                    q = f"{name}.{child_name}" if name else child_name
                    if child_name == seg:
                        return q
                    nxt.append(q)
            frontier = nxt
        return None


def _has_uninitialized_branch(node: torch._C.Node) -> bool:
    for block in node.blocks():
        for v in block.returnNode().inputs():
            if v.node().kind() == "prim::Uninitialized":
                return True
    return False


def probe_script_modules(module: torch.jit.ScriptModule, x: torch.Tensor) -> ModuleProbe:
    """Run a TorchScript model once; describe each module (see the module docstring)."""
    types = script_module_types(module)
    resolver = _NameResolver(module)
    graph = module.inlined_graph  # a fresh copy we may edit
    entries: list[tuple[torch._C.Value, str | None, list[str | None]]] = []
    flop_nodes: list[tuple[torch._C.Node, str | None]] = []
    hidden: set[str] = set()  # modules with FLOP nodes inside control flow
    for node in graph.nodes():
        kind = node.kind()
        owner = resolver.resolve(parse_hierarchy(node.getModuleHierarchy()))
        if kind in _FLOP_KINDS:
            flop_nodes.append((node, owner))
        for block in node.blocks():
            _collect_hidden_owners(block, resolver, hidden)
        if not (kind.startswith("aten::") or kind == "prim::If") or _has_uninitialized_branch(node):
            continue
        for out in node.outputs():
            if out.type().kind() != "TensorType":
                continue
            users = [resolver.resolve(parse_hierarchy(u.user.getModuleHierarchy())) for u in out.uses()]
            entries.append((out, owner, users))
    extra_inputs = _flop_node_inputs(flop_nodes)
    returned = [v for v, _, _ in entries] + extra_inputs
    ret = graph.return_node()
    original = ret.input()
    tup = graph.create("prim::TupleConstruct", [original] + returned)
    tup.insertBefore(ret)
    tup.output().setType(torch._C.TupleType([v.type() for v in tup.inputs()]))
    ret.replaceInput(0, tup.output())
    fn = torch._C._create_function_from_graph("glassbox_probe", graph)
    counter = make_flop_counter()
    # TorchScript ignores set_fastpath_enabled; grad mode keeps the fused
    # transformer kernels (which hide attention and FLOPs) out of the way.
    with torch.enable_grad(), no_mha_fastpath(), counter:
        try:
            outputs = fn(module._c, x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise IncompatibleInput(f"The model raised on these inputs: {one_line(exc, 200, typed=False)}") from None
    result, values = outputs[0], outputs[1:]
    value_of = {v.unique(): val for v, val in zip(returned, values)}
    stats = _module_stats(types, entries, values, result)
    notes: list[str] = []
    flops = _attribute_flops(flop_nodes, value_of, types)
    total = int(counter.get_total_flops())
    if flops is None:
        notes.append("TorchScript: FLOPs could not be attributed to modules; the total is for the whole model.")
    elif hidden:
        for name in list(flops):
            if name in hidden or name not in stats:  # not seen at the top level: unknown
                flops.pop(name)
        flops[""] = total
        notes.append(
            f"TorchScript: {len(hidden) - 1} module(s) compute inside scripted control flow; their FLOPs "
            "are unknown (the model total is exact)."
        )
    unknown = [n for n in types if n and n not in stats and types[n] not in _CONTAINERS]
    if unknown:
        notes.append(
            f"TorchScript has no hooks: output shapes of {len(unknown)} module(s) that run inside "
            "scripted control flow (or not at all) are unknown."
        )
    return ModuleProbe(names=list(types), types=types, stats=stats, flops=flops, total_flops=total, notes=notes)


def _collect_hidden_owners(block, resolver: _NameResolver, hidden: set[str]) -> None:
    """Add the module (and its ancestors) of every FLOP node inside ``block``."""
    for node in block.nodes():
        if node.kind() in _FLOP_KINDS:
            owner = resolver.resolve(parse_hierarchy(node.getModuleHierarchy())) or ""
            parts = owner.split(".") if owner else []
            hidden.update(".".join(parts[:i]) for i in range(len(parts) + 1))
        for inner in node.blocks():
            _collect_hidden_owners(inner, resolver, hidden)


def _flop_node_inputs(flop_nodes) -> list[torch._C.Value]:
    """Non-constant inputs of the top-level FLOP nodes (re-run one by one for counting)."""
    out: list[torch._C.Value] = []
    for node, _ in flop_nodes:
        for v in node.inputs():
            if v.node().kind() != "prim::Constant" and v.type().kind() != "ClassType":
                out.append(v)
    return out


def _attribute_flops(flop_nodes, value_of: dict[int, Any], types: dict[str, str]) -> dict[str, int] | None:
    flops = {name: 0 for name in types}
    for node, owner in flop_nodes:
        args = []
        for v in node.inputs():
            if v.node().kind() == "prim::Constant":
                args.append(v.toIValue())
            elif v.unique() in value_of:
                args.append(value_of[v.unique()])
            else:
                return None
        op = getattr(torch.ops.aten, node.kind().split("::", 1)[1])
        counter = make_flop_counter()
        try:
            with torch.no_grad(), counter:
                op(*args)
        except (RuntimeError, TypeError, ValueError):
            return None
        n = int(counter.get_total_flops())
        name = owner or ""
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in flops:
                flops[prefix] += n
    return flops


def _module_stats(types, entries, values, result) -> dict[str, ActivationStats]:
    """A module's output: its last top-level value used outside it."""
    stats: dict[str, ActivationStats] = {}
    root_out = result if isinstance(result, torch.Tensor) else None
    if root_out is not None:
        stats[""] = summarise_tensor(root_out)
    for (_, owner, users), val in zip(entries, values):
        if owner is None or owner == "" or not isinstance(val, torch.Tensor):
            continue
        parts = owner.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if types.get(name, "ModuleList") in _CONTAINERS:
                continue
            leaves = not users or any(u is None or not (u == name or u.startswith(name + ".")) for u in users)
            if leaves:
                stats[name] = summarise_tensor(val)
    return stats
