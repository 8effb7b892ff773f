"""DeepLift rescale rules applied on a captured ATen graph.

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
reference input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from ..engine import is_out_of_memory
from ..errors import GlassboxError, IncompatibleInput, TooLarge, UsageError
from ..graph_capture import FALLBACK_METHOD, GRAPH_CACHE, CapturedGraph, captured_graph, first_tensor
from ..model import LoadedModel

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


# --------------------------------------------------------------------------
# driver: the (input x background) grid in chunks
# --------------------------------------------------------------------------
@dataclass
class RescaleResult:
    """Rescale-rule DeepLift attributions averaged over references.

    Attributes:
        values: float64 [N, ...] shaped like the inputs; [N, L] for token ids
            (attributed at the embedding output, summed over its last dim).
        output: float64 [N]: f(x) for the target.
        base_value: float64 [N]: mean over the input's references of f(r).
        notes: how the graph was captured, ops without an exact rule.
    """

    values: np.ndarray
    output: np.ndarray
    base_value: np.ndarray
    notes: list[str] = field(default_factory=list)


def deeplift_rescale_attributions(
    model: LoadedModel,
    inputs: np.ndarray | torch.Tensor,
    baselines: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    grid: bool = True,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> RescaleResult:
    """DeepLift (rescale rule, SHAP DeepExplainer's rules) for any model format.

    Args:
        model: the loaded model (eager, TorchScript or ``.pt2``).
        inputs: model-ready batch [N, ...].
        baselines: references [B, ...]. With ``grid`` every input is paired
            with every reference and values are averaged over them (SHAP
            DeepExplainer / DeepLiftShap); without, B must be N (row i is
            input i's reference) or 1 (shared), as in DeepLift.
        target: int [N], the output column explained per input.
        batch_size: (input, reference) pairs per forward/backward; results do
            not depend on it. A model with a fixed batch size uses that.
        progress: called with (pairs done, pairs total) after each chunk; an
            exception raised there (``Cancelled``) stops the run.

    Returns:
        `RescaleResult`; ``values.sum() == output - base_value`` per input up
        to float error when every nonlinearity has a rule (see ``notes``).

    Raises:
        IncompatibleInput: the model cannot be captured as a graph, or the
            graph does not reproduce the model's outputs.
    """
    x = model.as_tensor(inputs)  # [N, ...]
    refs = model.as_tensor(baselines)  # [B, ...]
    n, b = x.shape[0], refs.shape[0]
    if not grid and b not in (1, n):
        raise UsageError(f"Paired baselines need 1 or {n} rows, got {b}.")
    job = _Job(
        x, refs, torch.as_tensor(np.asarray(target), dtype=torch.long, device=x.device).reshape(n),
        torch.as_tensor(model_logits(model, x, "inputs")),  # [N, K] from the model itself
        torch.as_tensor(model_logits(model, refs, "background")),  # [B, K]
        b if grid else 1, grid,
    )
    step = model.fixed_batch_size or int(batch_size)
    example = _pad(x[job.pairs(0, min(step, job.total))[0]], step if model.fixed_batch_size else None)
    try:
        with captured_graph(model, example) as captured:
            sums, plan = _run_job(job, captured, step, progress)
    except _Disagreement:
        if not captured.cached:
            raise
        GRAPH_CACHE.forget(model)  # weights changed since the graph was captured: capture again
        with captured_graph(model, example, reuse=False) as captured:
            sums, plan = _run_job(job, captured, step, progress)
    notes = [f"graph captured by {captured.how}", *captured.notes]
    if plan.unruled:
        notes.append(
            "no exact DeepLift rule for " + ", ".join(plan.unruled)
            + ": the gradient passes through them, so the values do not add up exactly to f(x) - E[f(b)]"
        )
    values, out_sum, base_sum = (v / job.per_input for v in sums)
    return RescaleResult(values.numpy(), out_sum.numpy(), base_sum.numpy(), notes)


@dataclass
class _Job:
    """The (input, reference) pairs to run: pair p = (p // B, p % B) on the grid."""

    x: torch.Tensor  # [N, ...]
    refs: torch.Tensor  # [B, ...]
    target: torch.Tensor  # [N]
    logits_x: torch.Tensor  # [N, K]
    logits_r: torch.Tensor  # [B, K]
    per_input: int
    grid: bool

    @property
    def total(self) -> int:
        return self.x.shape[0] * self.per_input

    def pairs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input rows and reference rows of pairs ``start..stop``."""
        p = torch.arange(start, stop)
        if self.grid:
            return p // self.per_input, p % self.per_input
        return p, (p if self.refs.shape[0] > 1 else torch.zeros_like(p))


def _run_job(
    job: _Job, captured: CapturedGraph, step: int, progress: Callable[[int, int], None] | None
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], RulePlan]:
    """Sums over each input's pairs of values, f(x) and f(r) (float64, CPU)."""
    n = job.x.shape[0]
    step = captured.fixed_batch or step
    plan = plan_rules(captured.module.graph, not torch.is_floating_point(job.x))
    values = None
    out_sum, base_sum = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    start = 0
    while start < job.total:
        i_idx, b_idx = job.pairs(start, min(start + step, job.total))
        ts = job.target[i_idx]
        try:
            pair_values, fx_out, fr_out = _run_chunk(
                captured.module, plan, job.x[i_idx], job.refs[b_idx], ts, captured.fixed_batch
            )
        except GlassboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - out of memory: halve the chunk and retry it
            if not is_out_of_memory(exc):
                raise IncompatibleInput(
                    f"The graph captured by {captured.how} could not be run backwards "
                    f"({type(exc).__name__}: {str(exc).strip()[:160]}).",
                    f"Use {FALLBACK_METHOD} instead.",
                ) from exc
            if captured.fixed_batch or step == 1:
                raise TooLarge(f"Out of memory with {step} (input, background) pairs per pass.") from None
            step //= 2
            continue
        _check_agreement(fx_out, job.logits_x[i_idx], fr_out, job.logits_r[b_idx], captured.how)
        if values is None:
            values = torch.zeros((n, *pair_values.shape[1:]), dtype=torch.float64)
        values.index_add_(0, i_idx, pair_values.double().cpu())
        out_sum.index_add_(0, i_idx, fx_out.gather(1, ts[:, None]).squeeze(1).double().cpu())
        base_sum.index_add_(0, i_idx, fr_out.gather(1, ts[:, None]).squeeze(1).double().cpu())
        start += len(i_idx)
        if progress is not None:
            progress(start, job.total)
    return (values, out_sum, base_sum), plan


def model_logits(model: LoadedModel, rows: np.ndarray | torch.Tensor, what: str = "inputs") -> np.ndarray:
    """The model's own logits [N, K]; a model that raises or gives NaN is refused clearly."""
    try:
        logits = model.predict_logits(rows)
    except GlassboxError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model raised
        raise IncompatibleInput(f"The model raised {type(exc).__name__} on the {what}: {str(exc)[:200]}") from None
    logits = np.asarray(logits).reshape(len(rows), -1)
    if not np.isfinite(logits).all():
        hint = "For text, keep at least one non-padding token in every row." if what == "background" else None
        raise IncompatibleInput(f"The model's output on the {what} is not finite (NaN or inf).", hint)
    return logits


def _pad(rows: torch.Tensor, size: int | None) -> torch.Tensor:
    """Rows padded with copies of the last row up to ``size`` (None: as they are)."""
    if size is None or rows.shape[0] >= size:
        return rows
    return torch.cat([rows, rows[-1:].expand(size - rows.shape[0], *rows.shape[1:])])


def _run_chunk(
    module: fx.GraphModule,
    plan: RulePlan,
    xs: torch.Tensor,
    rs: torch.Tensor,
    ts: torch.Tensor,
    fixed: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attributions of S (input, reference) pairs: values [S, ...], f(x) [S, K], f(r) [S, K]."""
    s = xs.shape[0]
    xs, rs, ts = _pad(xs, fixed), _pad(rs, fixed), _pad(ts, fixed)
    with torch.no_grad():
        reference = RuleInterpreter(module, plan, None)
        fr = first_tensor(reference.run(rs)).reshape(xs.shape[0], -1)  # [S, K]
    explained = RuleInterpreter(module, plan, reference.recorded)
    with torch.enable_grad():
        fx_ = first_tensor(explained.run(xs)).reshape(xs.shape[0], -1)  # [S, K]
        leaf = explained.attribution_leaf  # the input, or the embedding output for token ids
        selected = fx_.gather(1, ts[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, leaf, allow_unused=True)
    a_r = rs.float() if plan.attribution_node.op == "placeholder" else reference.recorded[plan.attribution_node]
    grad = torch.zeros_like(leaf) if grad is None else grad
    pair_values = grad * (leaf.detach() - a_r)  # [S, ...]
    if plan.attribution_node.op != "placeholder":
        pair_values = pair_values.flatten(2).sum(-1)  # [S, L]: one number per token
    return pair_values[:s].detach(), fx_[:s].detach(), fr[:s]


class _Disagreement(IncompatibleInput):
    """The captured graph's outputs differ from the model's."""


def _check_agreement(fx_out: torch.Tensor, want_x: torch.Tensor, fr_out: torch.Tensor, want_r: torch.Tensor, how: str) -> None:
    """Refuse when the captured graph does not reproduce the model's logits."""
    for got, want in ((fx_out, want_x), (fr_out, want_r)):
        got, want = got.float().cpu(), want.float()
        gap = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        if not gap <= 1e-3 * (1.0 + float(want.abs().max())):
            raise _Disagreement(
                f"The graph captured by {how} does not reproduce this model's outputs (difference {gap:.3g}).",
                f"Use {FALLBACK_METHOD} instead.",
            )
