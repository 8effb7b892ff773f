"""DeepLift's pairs run on a captured ATen graph: `PairInterpreter` computes every node that depends on the
explained input on the explained rows (with autograd) and on their paired reference rows at once, and the
nodes `explain.output.aten_rules.plan_rules` gave a rule take it from `explain.output.pair_rules` (max
pooling and Captum's softmax head as autograd functions of their own here), so a backward from the output
gives DeepLift multipliers. Which node gets which rule, and why each is exact, is `aten_rules`'.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.node import map_aggregate
from torch.fx.operator_schemas import normalize_function

from explain.errors import IncompatibleInput
from explain.output import pair_rules as pr
from explain.output.aten_graph import first_tensor
from explain.output.aten_rules import RuleFlavour, RulePlan, functional_name, op_name, tensor_args

aten = torch.ops.aten

#: views of a functional graph (nothing is written through them) as reshapes: the same values, also on a
#: channels-last batch (`explain.output.methods.deeplift_rules`), which ``view`` may refuse.
_RESHAPES = {aten.view.default: aten.reshape.default, aten._unsafe_view.default: aten.reshape.default,
             aten.view_copy.default: aten.reshape.default}


class _MaxPoolFn(torch.autograd.Function):
    """Max pooling with SHAP's / Captum's DeepLift rule: the pooled x and its indices (not
    differentiable), from the reference's pooled values and indices computed once by the caller."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, yr: torch.Tensor, ir: torch.Tensor, pool: Callable,
                flavour: RuleFlavour) -> tuple[torch.Tensor, torch.Tensor]:
        y, ix = pool(x)  # [S, C, *out], flat spatial argmax per plane
        ctx.flavour = flavour
        ctx.mark_non_differentiable(ix)
        ctx.save_for_backward(x - r, y, yr, ix, ir)
        return y, ix

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _grad_indices: Any):
        dx, y, yr, ix, ir = ctx.saved_tensors
        cross = torch.maximum(y, yr)
        flat = dx.new_zeros(*dx.shape[:2], dx[0, 0].numel())  # [S, C, H*W], whatever dx's memory layout
        flat.scatter_add_(2, ix.flatten(2), (grad * (cross - yr)).flatten(2))
        flat.scatter_add_(2, ir.flatten(2), (grad * (y - cross)).flatten(2))
        small = dx.abs() < ctx.flavour.maxpool_eps
        out = flat.view(dx.shape) / torch.where(small, 1.0, dx)
        if bool(small.any()):
            if ctx.flavour.maxpool_fallback == "zero":
                fallback = torch.zeros_like(out)
            else:
                fallback = dx.new_zeros(flat.shape).scatter_add_(2, ix.flatten(2), grad.flatten(2)).view(dx.shape)
            out = torch.where(small, fallback, out)
        return out, None, None, None, None, None


class _CaptumSoftmaxFn(torch.autograd.Function):
    """Captum's ``softmax`` rule: rescale, minus its mean over both halves of the pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, fn: Callable, eps: float, rows: int) -> torch.Tensor:
        y = fn(x)
        dx, dy = x - r, y - fn(r)
        small = dx.abs() < eps
        ctx.fn, ctx.rows = fn, rows
        ctx.save_for_backward(x, r, dy / torch.where(small, torch.ones_like(dx), dx), small)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, r, ratio, small = ctx.saved_tensors
        halves = []
        for side in (x, r):
            with torch.enable_grad():
                t = side.detach().requires_grad_(True)
                (local,) = torch.autograd.grad(ctx.fn(t), t, grad)
            halves.append(torch.where(small, local, grad * ratio))
        rows = ctx.rows
        mean = (halves[0][:rows].sum() + halves[1][:rows].sum()) / (2 * halves[0][:rows].numel())
        return halves[0] - mean, None, None, None, None


@dataclass
class Gate:
    """A mask computed from the token ids, attributed like an input.

    Attributes:
        leaf: its value on the explained rows, a leaf tensor [S, ..., L].
        delta: explained minus reference value, same shape.
    """

    leaf: torch.Tensor
    delta: torch.Tensor


class PairInterpreter(fx.Interpreter):
    """Runs a captured graph on explained rows and their references at once.

    ``run(xs, rs)`` returns the output on ``xs``; ``ref_output`` holds it on
    ``rs``. The attribution node's explained value is ``attribution_leaf``,
    its reference value ``attribution_ref``; ``gates`` are the id masks
    attributed with it. Backward from the output gives DeepLift multipliers.
    """

    def __init__(self, module: fx.GraphModule, plan: RulePlan, rows: int):
        super().__init__(module, garbage_collect_values=False)  # rules read their inputs' inputs
        self.plan = plan
        self.rows = rows  # real (not padding) rows of the pass: Captum's softmax mean
        self.ref: dict[fx.Node, Any] = {}
        self.leaves: dict[fx.Node, torch.Tensor] = {}
        self.gates: list[Gate] = []
        self.attribution_leaf: torch.Tensor | None = None
        self.attribution_ref: torch.Tensor | None = None
        self.ref_output: Any = None
        self._ref_input: torch.Tensor | None = None

    def run(self, xs: torch.Tensor, rs: torch.Tensor) -> Any:  # type: ignore[override]
        self._ref_input = rs
        return super().run(xs)

    # -- values on the two sides ------------------------------------------
    def _x(self, a: Any) -> Any:
        return map_aggregate(a, lambda v: self.leaves.get(v, self.env[v]) if isinstance(v, fx.Node) else v)

    def _r(self, a: Any) -> Any:
        return map_aggregate(a, lambda v: (self.ref[v] if v in self.ref else self.env[v]) if isinstance(v, fx.Node) else v)

    def pair(self, node: Any) -> pr.Pair | None:
        if not isinstance(node, fx.Node):
            return None
        return self._x(node), self._r(node)

    def run_node(self, n: fx.Node) -> Any:
        plan = self.plan
        if op_name(n) == "copy_" and isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder":
            return None  # functionalisation's write-back into a mutated input: not ours to do
        if n.op == "placeholder":
            value = super().run_node(n)
            self.ref[n] = self._ref_input
            if n is plan.attribution_node:
                self.attribution_ref = self._ref_input.detach().float()
                self.attribution_leaf = value.detach().float().requires_grad_(True)
                return self.attribution_leaf
            return value
        if n.op == "output":
            self.ref_output = self._r(n.args[0])
            return self._x(n.args[0])
        if n is plan.attribution_node:
            with torch.no_grad():
                value = super().run_node(n)
                self.ref[n] = self._call(n, self._r(n.args), self._r(n.kwargs))
            self.attribution_ref = self.ref[n].detach().float()
            self.attribution_leaf = value.detach().float().requires_grad_(True)
            return self.attribution_leaf
        if n in plan.id_only:
            with torch.no_grad():
                value = super().run_node(n)
                self.ref[n] = self._call(n, self._r(n.args), self._r(n.kwargs))
            return value
        if n not in plan.dependent or n.op != "call_function":
            return super().run_node(n)
        rule = plan.rules.get(n)
        if rule is None:
            self._gate_varying_args(n)
            with torch.no_grad():
                self.ref[n] = self._call(n, self._r(n.args), self._r(n.kwargs))
            return self._call(n, self._x(n.args), self._x(n.kwargs))
        value, self.ref[n] = getattr(self, f"_rule_{rule}")(n)
        return value

    def _call(self, n: fx.Node, args: Any, kwargs: Any) -> Any:
        return _RESHAPES.get(n.target, n.target)(*args, **kwargs)

    def _gate_varying_args(self, n: fx.Node) -> None:
        """Id masks entering a dependent op become attributed leaves (gates)."""
        if _is_mask_add(n, self.plan):
            return  # its softmax takes the mask as the gate exp(mask)
        for a in tensor_args(n):
            if a in self.plan.id_only and a not in self.leaves:
                self._make_gate(a, self.env[a], self.ref[a])

    def _make_gate(self, key: Any, gx: torch.Tensor, gr: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(gx) or torch.equal(gx, gr):
            return gx
        delta = gx - gr
        if not bool(torch.isfinite(delta).all()):
            return gx  # an infinite jump cannot be attributed (it shows as completeness error)
        leaf = gx.detach().requires_grad_(True)
        self.gates.append(Gate(leaf, delta))
        if isinstance(key, fx.Node):
            self.leaves[key] = leaf
        return leaf

    # -- rules --------------------------------------------------------------
    def _first(self, n: fx.Node) -> tuple[pr.Pair, tuple, dict]:
        x, r = self._x(n.args[0]), self._r(n.args[0])
        return (x, r), self._x(tuple(n.args[1:])), self._x(dict(n.kwargs))

    def _rule_rescale(self, n: fx.Node):
        pair, rest, kwargs = self._first(n)
        op = getattr(aten, functional_name(op_name(n))) if op_name(n).endswith("_") else n.target
        return pr.rescale(pair, lambda t: op(t, *rest, **kwargs), self.plan.flavour.rescale_eps)

    def _rule_maxpool(self, n: fx.Node):
        (x, r), rest, kwargs = self._first(n)
        pool = _pool_fn(n, (x, *rest), kwargs)
        with torch.no_grad():
            yr, ir = pool(r)
        y, ix = _MaxPoolFn.apply(x, r, yr, ir, pool, self.plan.flavour)
        if op_name(n).endswith("_with_indices"):
            return (y, ix), (yr, ir)
        return y, yr

    def _rule_softmax_head(self, n: fx.Node):
        (x, r), rest, kwargs = self._first(n)
        fn = lambda t: n.target(t, *rest, **kwargs)  # noqa: E731
        if self.plan.flavour.softmax_head == "rescale":
            return pr.rescale((x, r), fn, self.plan.flavour.rescale_eps)
        with torch.no_grad():
            yr = fn(r)
        return _CaptumSoftmaxFn.apply(x, r, fn, self.plan.flavour.rescale_eps, self.rows), yr

    def _rule_softmax(self, n: fx.Node):
        dim = int(n.args[1])
        eps = self.plan.flavour.rescale_eps
        mask = self.plan.masks.get(n)
        if mask is None:
            s, gate = self.pair(n.args[0]), None
        else:
            s = self.pair(mask[0])
            with torch.no_grad():
                mx, mr = self.env[mask[1]], self.ref[mask[1]]
                gx, gr = torch.exp(mx.to(s[0].dtype)), torch.exp(mr.to(s[0].dtype))
            gate = (self._make_gate(None, gx, gr), gr)
        out = pr.softmax(s, dim, gate, eps)
        dtype = n.meta.get("val").dtype if isinstance(n.meta.get("val"), torch.Tensor) else out[0].dtype
        return out[0].to(dtype), out[1].to(dtype)

    def _rule_log_softmax(self, n: fx.Node):
        return pr.log_softmax(self.pair(n.args[0]), int(n.args[1]), self.plan.flavour.rescale_eps)

    def _rule_layer_norm(self, n: fx.Node):
        norm = normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True).kwargs
        shape = norm["normalized_shape"]
        weight, bias = self._x(norm.get("weight")), self._x(norm.get("bias"))
        y, mean, rstd = pr.layer_norm(self.pair(n.args[0]), len(shape), weight, bias, float(norm.get("eps", 1e-5)),
                                      self.plan.flavour.rescale_eps)
        if op_name(n) == "native_layer_norm":
            return (y[0], mean[0], rstd[0]), (y[1], mean[1], rstd[1])
        return y

    def _rule_rms_norm(self, n: fx.Node):
        norm = normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True).kwargs
        x = self.pair(n.args[0])
        eps_norm = norm.get("eps")
        eps_norm = torch.finfo(x[0].dtype).eps if eps_norm is None else float(eps_norm)
        return pr.rms_norm(x, len(norm["normalized_shape"]), self._x(norm.get("weight")), eps_norm,
                           self.plan.flavour.rescale_eps)

    def _rule_attention(self, n: fx.Node):
        norm = normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True).kwargs
        if float(norm.get("dropout_p", 0.0) or 0.0) != 0.0:
            raise IncompatibleInput("Attention with dropout cannot be explained by rules; put the model in eval mode.")
        q, k, v = (self.pair(norm[name]) for name in ("query", "key", "value"))
        q, k, v = ((p[0], p[1]) for p in (q, k, v))
        mask_node = norm.get("attn_mask")
        bias = gate = None
        if isinstance(mask_node, fx.Node):
            mx, mr = self._x(mask_node), self._r(mask_node)
            if mx.dtype == torch.bool:
                gate = (self._make_gate(None, mx.to(q[0].dtype), mr.to(q[0].dtype)), mr.to(q[0].dtype))
            elif mask_node in self.plan.id_only and not torch.equal(mx, mr):
                gate = (self._make_gate(None, torch.exp(mx), torch.exp(mr)), torch.exp(mr))
            else:
                bias = (mx, mr)
        out = pr.attention(q, k, v, bias, gate, norm.get("scale"), bool(norm.get("is_causal", False)),
                           bool(norm.get("enable_gqa", False)), self.plan.flavour.rescale_eps)
        with torch.no_grad():  # the op's own memory layout: later views of the graph rely on it
            real = first_tensor(n.target(*self._x(n.args), **self._x(n.kwargs)))
        out = tuple(torch.empty_like(real).copy_(t) for t in out)
        if op_name(n) == "scaled_dot_product_attention":
            return out
        lse = torch.zeros(out[0].shape[:-1], dtype=torch.float32, device=out[0].device)  # unused by models
        return (out[0], lse), (out[1], lse)

    def _rule_product(self, n: fx.Node):
        varying = [a for a in tensor_args(n) if a in self.plan.dependent or a in self.plan.id_only]
        for a in varying:
            if a in self.plan.id_only and a not in self.leaves:
                self._make_gate(a, self.env[a], self.ref[a])

        def fn(*values: torch.Tensor) -> torch.Tensor:
            swap = dict(zip(varying, values))
            args = map_aggregate(n.args, lambda v: swap.get(v, self.env.get(v)) if isinstance(v, fx.Node) else v)
            kwargs = map_aggregate(n.kwargs, lambda v: swap.get(v, self.env.get(v)) if isinstance(v, fx.Node) else v)
            return n.target(*args, **kwargs)

        return pr.product(fn, *(self.pair(a) for a in varying))

    def _rule_div(self, n: fx.Node):
        a, b = n.args[0], n.args[1]
        if b in self.plan.id_only and b not in self.leaves:
            self._make_gate(b, self.env[b], self.ref[b])
        inv = pr.rescale(self.pair(b), torch.reciprocal, self.plan.flavour.rescale_eps)
        num = self.pair(a) if isinstance(a, fx.Node) else (torch.as_tensor(a), torch.as_tensor(a))
        return pr.product(torch.mul, num, inv)


def _is_mask_add(n: fx.Node, plan: RulePlan) -> bool:
    return any(mask[1] in n.args and n is s.args[0] for s, mask in plan.masks.items())


def _pool_fn(node: fx.Node, args: tuple, kwargs: dict) -> Callable:
    name = functional_name(op_name(node))
    dims = int(name[len("max_pool")])
    norm = normalize_function(node.target, args, kwargs, normalize_to_only_use_kwargs=True).kwargs
    kernel = list(norm["kernel_size"])
    stride = list(norm.get("stride") or []) or kernel
    options = (stride, norm.get("padding", 0), norm.get("dilation", 1), norm.get("ceil_mode", False))
    op = getattr(aten, f"max_pool{dims}d_with_indices")
    return lambda t: op(t, kernel, *options)
