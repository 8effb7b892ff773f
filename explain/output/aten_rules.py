"""DeepLift rules on a captured ATen graph: which node gets which rule, and how.

The rules are those of SHAP's PyTorch DeepExplainer (``deep_pytorch.py``),
applied to graph nodes instead of module hooks, so functional calls, in-place
and reused activations, TorchScript and ``torch.export`` programs all get them:

- elementwise nonlinearities (relu, sigmoid, tanh, gelu, silu, softplus, elu,
  leaky_relu, selu, celu, hardtanh/relu6, mish, hardsigmoid, hardswish, prelu,
  scalar clamps): the multiplier Δout/Δin between each explained row and its
  paired reference row; where |Δin| < 1e-6 the local gradient is used;
- a softmax whose output is the model output (an ``nn.Softmax`` head): the
  same elementwise rescale, as SHAP does for ``nn.Softmax`` modules;
- max pooling: SHAP's rule -- the output difference is split between the
  argmax positions of the input and of the reference, divided by Δin (zero
  where |Δin| < 1e-7); contributions add up where windows overlap;
- every other op keeps its plain gradient (linear ops are exact; softmax,
  attention and layer norm have no exact rule, as in SHAP and Captum, so the
  attributions of graphs holding them do not sum exactly to Δf).

Each chunk runs the graph twice through `RuleInterpreter`: once on the
reference rows (recording each rule node's input) and once on the explained
rows, where the rule nodes become autograd functions that read the paired
reference input. The driver over (input, reference) pairs is
`explain.output.methods.deeplift_rules.deeplift_rescale_attributions`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from explain.errors import IncompatibleInput

aten = torch.ops.aten

#: |Δin| below which the rescale rule falls back to the gradient (as SHAP).
RESCALE_EPS = 1e-6
#: |Δin| below which the max-pool rule gives zero (as SHAP).
MAXPOOL_EPS = 1e-7

RESCALE_OPS = frozenset(
    "relu sigmoid tanh gelu silu softplus elu leaky_relu selu celu hardtanh relu6 mish "
    "hardsigmoid hardswish prelu clamp clamp_min clamp_max".split()
)
MAXPOOL_OPS = frozenset(
    f"max_pool{d}d{suffix}" for d in (1, 2, 3) for suffix in ("", "_with_indices")
)
#: Ops whose gradient is exact for DeepLift (linear in the explained input,
#: or index/shape plumbing). Products count only with one input-dependent factor.
LINEAR_OPS = frozenset(
    """conv1d conv2d conv3d convolution conv_transpose1d conv_transpose2d conv_transpose3d linear
    addmm mm bmm matmul baddbmm add sub rsub mul div neg view reshape _unsafe_view flatten permute
    transpose t expand squeeze unsqueeze select slice cat stack clone contiguous alias
    _native_batch_norm_legit_no_training batch_norm native_batch_norm avg_pool1d avg_pool2d
    avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d mean sum dropout
    sym_size _to_copy to copy constant_pad_nd pad index_select masked_fill where embedding
    split split_with_sizes chunk unbind narrow getitem zeros_like ones_like eq ne lt gt le ge
    _assert_scalar _local_scalar_dense scalar_tensor""".split()
)
#: Softmax gets SHAP's elementwise rescale only as the model's last op (an
#: ``nn.Softmax`` head); inside the network (attention) its gradient passes.
FINAL_SOFTMAX_OPS = frozenset({"softmax", "_softmax"})
_PLUMBING = frozenset("clone view reshape alias _to_copy to contiguous _unsafe_view flatten squeeze getitem".split())
_PRODUCTS = frozenset("mul div mm bmm matmul baddbmm addmm".split())


def op_name(node: fx.Node) -> str | None:
    """A node's op name: ``aten.relu_.default`` -> ``relu_``, ``aten.view_copy`` -> ``view``.

    Python callables (``operator.getitem``) give their ``__name__``; None for
    nodes that call nothing (placeholders, attributes, the output).
    """
    if node.op != "call_function":
        return None
    target = node.target
    packet = getattr(target, "overloadpacket", target)
    qualified = getattr(packet, "_qualified_op_name", None)
    if qualified is None:
        return getattr(target, "__name__", str(target))
    name = qualified.split("::")[-1]
    return name[: -len("_copy")] if name.endswith("_copy") and name != "_to_copy" else name


def _functional(name: str) -> str:
    """``relu_`` -> ``relu``: the out-of-place op of an in-place one."""
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class _RescaleFn(torch.autograd.Function):
    """y = f(x); backward multiplies by (f(x) - f(r)) / (x - r), gradient where x ≈ r."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, fn: Callable) -> torch.Tensor:
        y = fn(x)
        dx = x - r  # [S, ...] row s paired with reference row s
        small = dx.abs() < RESCALE_EPS
        ratio = (y - fn(r)) / torch.where(small, torch.ones_like(dx), dx)
        ctx.fn = fn
        ctx.save_for_backward(x, ratio, small)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, ratio, small = ctx.saved_tensors
        out = grad * ratio
        if bool(small.any()):
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                (local,) = torch.autograd.grad(ctx.fn(xx), xx, grad)
            out = torch.where(small, local, out)
        return out, None, None


class _MaxPoolFn(torch.autograd.Function):
    """Max pooling with SHAP's DeepLift rule; returns the pooled x only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, pool: Callable) -> torch.Tensor:
        y, ix = pool(x)  # [S, C, *out], flat spatial argmax per plane
        yr, ir = pool(r)
        ctx.save_for_backward(x - r, y, yr, ix, ir)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        dx, y, yr, ix, ir = ctx.saved_tensors
        cross = torch.maximum(y, yr)
        flat = torch.zeros_like(dx).flatten(2)  # [S, C, H*W]
        flat.scatter_add_(2, ix.flatten(2), (grad * (cross - yr)).flatten(2))
        flat.scatter_add_(2, ir.flatten(2), (grad * (y - cross)).flatten(2))
        small = dx.abs() < MAXPOOL_EPS
        out = torch.where(small, torch.zeros_like(dx), flat.view_as(dx) / torch.where(small, torch.ones_like(dx), dx))
        return out, None, None


def _rescale_fn(name: str, args: tuple, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    op = getattr(aten, _functional(name))
    rest = args[1:]
    return lambda t: op(t, *rest, **kwargs)


def _pool_fn(node: fx.Node, args: tuple, kwargs: dict) -> Callable:
    name = _functional(op_name(node))
    dims = int(name[len("max_pool")])
    norm = normalize_function(node.target, args, kwargs, normalize_to_only_use_kwargs=True).kwargs
    kernel = list(norm["kernel_size"])
    stride = list(norm.get("stride") or []) or kernel
    options = (stride, norm.get("padding", 0), norm.get("dilation", 1), norm.get("ceil_mode", False))
    op = getattr(aten, f"max_pool{dims}d_with_indices")
    return lambda t: op(t, kernel, *options)


@dataclass
class RulePlan:
    """Which graph nodes get which rule, and where attributions are taken.

    Attributes:
        attribution_node: the placeholder (float inputs) or the embedding
            lookup whose output is attributed (token ids).
        rules: node -> ``"rescale"`` | ``"maxpool"``.
        unruled: names of input-dependent nonlinear ops without an exact rule
            (their gradient passes through; additivity is then approximate).
    """

    attribution_node: fx.Node
    rules: dict[fx.Node, str]
    unruled: list[str] = field(default_factory=list)


def plan_rules(graph: fx.Graph, token_ids: bool) -> RulePlan:
    """Assign rules to the nodes of ``graph`` that depend on the explained input."""
    nodes = list(graph.nodes)
    placeholder = next(n for n in nodes if n.op == "placeholder")
    start = _embedding_node(nodes, placeholder) if token_ids else placeholder
    dependent = {start}
    rules: dict[fx.Node, str] = {}
    unruled: set[str] = set()
    for node in nodes:
        if node.op != "call_function" or not any(a in dependent for a in node.all_input_nodes):
            continue
        dependent.add(node)
        if not isinstance(node.target, torch._ops.OpOverload):
            continue  # python plumbing: getitem, symbolic shape arithmetic
        name = op_name(node) or ""
        base = _functional(name)
        first_dependent = isinstance(node.args[0], fx.Node) and node.args[0] in dependent
        tensors_after_first = any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values()))
        if base in MAXPOOL_OPS and first_dependent:
            rules[node] = "maxpool"
        elif base in RESCALE_OPS and first_dependent and (base == "prelu" or not tensors_after_first):
            rules[node] = "rescale"
        elif base in FINAL_SOFTMAX_OPS and first_dependent and _feeds_output(node):
            rules[node] = "rescale"  # SHAP's (elementwise) rule for a final nn.Softmax
        elif not node.users:
            continue  # dead node (make_fx leaves detach() calls behind)
        elif base in _PRODUCTS and sum(a in dependent for a in node.all_input_nodes) > 1:
            unruled.add(base)
        elif base not in LINEAR_OPS:
            unruled.add(base.lstrip("_"))
    return RulePlan(start, rules, sorted(unruled))


def _feeds_output(node: fx.Node) -> bool:
    """True when ``node``'s value is the graph output, up to copies and reshapes."""
    while True:
        users = list(node.users)
        if any(u.op == "output" for u in users):
            return True
        if len(users) != 1 or _functional(op_name(users[0]) or "") not in _PLUMBING:
            return False
        node = users[0]


def _embedding_node(nodes: list[fx.Node], placeholder: fx.Node) -> fx.Node:
    """The embedding lookup fed (directly or through plumbing) by the token ids."""
    reach = {placeholder}
    for node in nodes:
        if any(a in reach for a in node.all_input_nodes):
            if op_name(node) == "embedding" and isinstance(node.args[1], fx.Node) and node.args[1] in reach:
                return node
            reach.add(node)
    raise IncompatibleInput(
        "This text model has no embedding lookup on its token ids, so there is no layer to attribute to.",
        "Use occlusion or feature_ablation instead.",
    )


class RuleInterpreter(fx.Interpreter):
    """Runs a captured graph as the reference pass or as the explained pass.

    Reference pass (``refs=None``): plain ops; records each rule node's input
    and the attribution node's value in ``recorded``. Explained pass: rule
    nodes become `_RescaleFn` / `_MaxPoolFn` paired with ``refs``; the
    attribution node's value becomes the leaf ``attribution_leaf``.
    """

    def __init__(self, module: fx.GraphModule, plan: RulePlan, refs: dict[fx.Node, torch.Tensor] | None):
        super().__init__(module)
        self.plan = plan
        self.refs = refs
        self.recorded: dict[fx.Node, torch.Tensor] = {}
        self.attribution_leaf: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        if op_name(n) == "copy_" and isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder":
            return None  # functionalisation's write-back into a mutated input: not ours to do
        if n is self.plan.attribution_node:
            value = super().run_node(n)
            if self.refs is None:
                self.recorded[n] = value.detach()
                return value
            self.attribution_leaf = value.detach().float().requires_grad_(True)
            return self.attribution_leaf
        rule = self.plan.rules.get(n)
        if rule is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        if self.refs is None:
            self.recorded[n] = x.detach()
            return super().run_node(n)
        r = self.refs[n]
        if rule == "rescale":
            return _RescaleFn.apply(x, r, _rescale_fn(op_name(n), args, kwargs))
        pool = _pool_fn(n, args, kwargs)
        y = _MaxPoolFn.apply(x, r, pool)
        if op_name(n).endswith("_with_indices"):
            return y, pool(x.detach())[1]
        return y
