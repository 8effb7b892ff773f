"""Attention weights out of a ``torch.export`` graph, by rewriting the graph.

A user often has only the exported ``.pt2`` file: no Python class, no hooks.
The graph still says where attention happens:

- ``scaled_dot_product_attention`` nodes (``nn.MultiheadAttention`` with
  ``need_weights=False`` exports to one) and their decomposed fused variants
  (``_scaled_dot_product_flash_attention_for_cpu``, ...). Fused kernels never
  materialise the probabilities, so each is replaced by an explicit
  ``softmax(q·kᵀ·scale + mask) @ v`` (:func:`sdpa_with_probs`), whose
  probabilities become extra graph outputs;
- explicit attention: a ``softmax`` over the last dimension whose input comes
  from a matrix product (q·kᵀ) a few element-wise steps earlier. Its output is
  returned as it is.

The rewritten graph returns ``(*original_outputs, *attention_probabilities)``.
Each probability tensor is named after the innermost module of its node
(``nn_module_stack``), e.g. ``encoder.layers.0.self_attn``.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

aten = torch.ops.aten

#: fused attention ops returning one tensor
_SDPA_SINGLE = {aten.scaled_dot_product_attention.default}
#: fused attention ops returning a tuple whose item 0 is the output
_SDPA_TUPLE = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_attention_math.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
}
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default, torch.softmax, F.softmax}
_MATMUL = {aten.matmul.default, aten.bmm.default, aten.mm.default, aten.einsum.default, aten.baddbmm.default}
#: how many element-wise steps (scale, mask, view) may separate q·kᵀ from its softmax
_MAX_HOPS = 8


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Attention probabilities exactly as ``scaled_dot_product_attention`` defines them.

    Args:
        q: [..., H, Lq, E] queries; k: [..., Hk, Lk, E] keys.
        attn_mask: bool (True = may attend) or additive float mask,
            broadcastable to [..., H, Lq, Lk].
        is_causal: apply a lower-triangular mask.
        scale: defaults to 1/sqrt(E).
        enable_gqa: repeat key heads to match query heads.

    Returns:
        [..., H, Lq, Lk] probabilities; rows sum to 1 (0 for fully masked rows).
    """
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * s  # [..., H, Lq, Lk]
    if is_causal:
        lq, lk = scores.shape[-2:]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.nan_to_num(probs, nan=0.0).to(q.dtype)  # fully masked rows -> 0


def sdpa_with_probs(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` (inference, no dropout) that also returns the probabilities.

    Returns:
        (output [..., H, Lq, Ev], probabilities [..., H, Lq, Lk]).
    """
    probs = attention_probs(q, k, attn_mask, is_causal, scale, enable_gqa)
    if enable_gqa and v.shape[-3] != q.shape[-3]:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    return torch.matmul(probs, v), probs


@dataclass
class RewrittenGraph:
    """A graph module returning ``(*outputs, *probs)`` and what the extras mean.

    Attributes:
        module: the rewritten ``fx.GraphModule`` (flat inputs, flat tuple output).
        num_outputs: how many leading outputs are the model's own.
        layer_names: one module name per extra output, in graph order.
        kinds: ``"sdpa"`` (rewritten fused attention) or ``"softmax"`` per extra.
    """

    module: torch.fx.GraphModule
    num_outputs: int
    layer_names: list[str]
    kinds: list[str]


def _innermost_module(node: torch.fx.Node) -> str:
    from explain.structure.module_probe import node_module_paths

    paths = [p for p, _ in node_module_paths(node)]
    return paths[-1] if paths else f"node {node.name}"


def _bind(node: torch.fx.Node) -> dict:
    """Arguments of an ATen call node by schema name."""
    schema = node.target._schema
    bound = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _is_attention_softmax(node: torch.fx.Node) -> bool:
    """A softmax over the last dim of a ≥3-D tensor fed by a matrix product."""
    if node.target not in _SOFTMAX:
        return False
    src = node.args[0] if node.args else None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    val = getattr(src, "meta", {}).get("val")
    ndim = getattr(val, "ndim", None)
    if ndim is None or ndim < 3 or dim not in (-1, ndim - 1):
        return False
    frontier, seen = [src], set()
    for _ in range(_MAX_HOPS):
        nxt = []
        for n in frontier:
            if not isinstance(n, torch.fx.Node) or n in seen:
                continue
            seen.add(n)
            if n.target in _MATMUL:
                return True
            nxt.extend(a for a in n.all_input_nodes if a.op == "call_function")
        frontier = nxt
    return False


def find_attention_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """Fused-attention and attention-softmax nodes, in graph order."""
    return [
        n for n in graph.nodes
        if n.op == "call_function" and (n.target in _SDPA_SINGLE or n.target in _SDPA_TUPLE or _is_attention_softmax(n))
    ]


def rewrite_attention_graph(gm: torch.fx.GraphModule) -> RewrittenGraph | None:
    """Copy ``gm``'s graph, make every attention's probabilities an extra output.

    The original module is not modified (the copy shares its parameters).

    Returns:
        None when the graph holds no attention.
    """
    if not find_attention_nodes(gm.graph):
        return None
    graph = torch.fx.Graph()  # default codegen: flat inputs, flat tuple output
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    extras: list[torch.fx.Node] = []
    names: list[str] = []
    kinds: list[str] = []
    outputs: list = []
    for node in gm.graph.nodes:
        if node.op == "output":
            flat = node.args[0]
            outputs = list(flat) if isinstance(flat, (tuple, list)) else [flat]
            continue
        new = graph.node_copy(node, lambda n: env[n])
        env[node] = new
        if node.op != "call_function":
            continue
        if node.target in _SDPA_SINGLE or node.target in _SDPA_TUPLE:
            env[node], probs = _replace_sdpa(graph, node, new, env)
            extras.append(probs)
            kinds.append("sdpa")
            names.append(_innermost_module(node))
        elif _is_attention_softmax(node):
            extras.append(new)
            kinds.append("softmax")
            names.append(_innermost_module(node))
    mapped = [env[o] if isinstance(o, torch.fx.Node) else o for o in outputs]
    graph.output(tuple(mapped + extras))
    module = torch.fx.GraphModule(gm, graph)
    return RewrittenGraph(module=module, num_outputs=len(mapped), layer_names=names, kinds=kinds)


def _replace_sdpa(graph: torch.fx.Graph, node: torch.fx.Node, new: torch.fx.Node, env):
    """Swap the copied fused node ``new`` for ``sdpa_with_probs``; return (replacement, probs)."""
    a = _bind(node)
    mask = a.get("attn_mask", a.get("attn_bias"))
    m = lambda x: env[x] if isinstance(x, torch.fx.Node) else x  # noqa: E731
    with graph.inserting_after(new):
        call = graph.call_function(
            sdpa_with_probs,
            (m(a["query"]), m(a["key"]), m(a["value"]), m(mask), 0.0, a.get("is_causal", False),
             a.get("scale"), a.get("enable_gqa", False)),
        )
    with graph.inserting_after(call):
        out = graph.call_function(operator.getitem, (call, 0))
    with graph.inserting_after(out):
        probs = graph.call_function(operator.getitem, (call, 1))
    if node.target in _SDPA_SINGLE:
        replacement = out
    else:
        # users take item 0 of the fused op's tuple: hand them a tuple whose item 0 is ours
        with graph.inserting_after(probs):
            replacement = graph.call_function(_as_tuple, (out, new))
    graph.erase_node(new) if node.target in _SDPA_SINGLE else None
    return replacement, probs


def _as_tuple(out: torch.Tensor, fused: tuple) -> tuple:
    """(our output, *the fused op's other results) for ops returning tuples."""
    return (out, *tuple(fused)[1:])
