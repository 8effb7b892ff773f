"""DeepLift rules on a captured ATen graph: which node gets which rule, and how.

The graph is run once per chunk as *pairs*: every node that depends on the
explained input is computed on the explained rows (with autograd) and on
their paired reference rows (row s against row s), and rule nodes replace
their gradient by DeepLift multipliers (`explain.output.pair_rules`). Each rule
satisfies summation to delta (Σ multiplier · Δin = Δout), so the attributions
add up to f(x) - f(r) whenever every input-dependent op has one:

- elementwise nonlinearities (relu, sigmoid, tanh, gelu, silu, softplus, elu,
  leaky_relu, selu, celu, hardtanh/relu6, mish, hardsigmoid, hardswish, prelu,
  clamps, exp, log, sqrt, rsqrt, reciprocal, erf, pow by a scalar, ...): the
  rescale rule Δout/Δin, the local gradient where |Δin| < eps (Shrikumar et
  al. 2017; SHAP's ``nonlinear_1d``, Captum's ``nonlinear``);
- products of two input-dependent tensors (mul, matmul/bmm/mm, baddbmm;
  attention's QKᵀ and attn·V, gating): the gradient at the midpoint of the
  two sides -- the Shapley value of the two factors (Ancona et al.'s and
  DeepSHAP's "linear rule for products"; no RevealCancel), exact for any op of
  degree 2; a division by an input-dependent tensor is a product with its
  reciprocal (rescale);
- softmax / log_softmax inside the network, layer_norm, rms_norm and
  scaled_dot_product_attention: decomposed into the steps above
  (`explain.output.pair_rules`), so they are exact too. An additive attention
  mask computed from the token ids (padding) enters softmax as the gate
  exp(mask) (finite for -inf masks); its contribution is credited to the key
  token of the mask's last dimension;
- max pooling: SHAP's rule -- the output difference split between the argmax
  positions of input and reference, divided by Δin;
- a softmax that is the model's output (an ``nn.Softmax`` head) and the eps
  of the rules follow the explainer being reproduced (`RULE_FLAVOURS`):
  ``"shap"`` (SHAP DeepExplainer: elementwise rescale, eps 1e-6, zero where
  max pooling has |Δin| < 1e-7) and ``"captum"`` (Captum DeepLift: its
  softmax rule, rescale minus the mean over the pass's 2·S·K entries, eps
  1e-10 with the gradient below it, as Captum). Both are Captum's / SHAP's own
  choices and do not add up exactly through a softmax head.
- ops that read only their inputs' shapes (``new_ones``, ``arange``, ``sym_size``, ...:
  `SHAPE_ONLY_OPS`; a causal LM's positions and causal mask built from ``inputs_embeds``) are
  not input-dependent: their values are the same on both sides (rotary cos / sin, masks);
- every other op keeps its gradient: linear ops are exact; ops without a rule
  are named in the notes and the values then only approximately add up.

The plan is run by `explain.output.pair_interpreter.PairInterpreter`; the driver over (input, reference)
pairs is `explain.output.methods.deeplift_rules.deeplift_rescale_attributions`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from explain.errors import IncompatibleInput
from explain.loading.export_lm import embedding_lookup

aten = torch.ops.aten


@dataclass(frozen=True)
class RuleFlavour:
    """Where SHAP's and Captum's DeepLift differ: eps and the softmax-head / max-pool rules."""

    rescale_eps: float
    maxpool_eps: float
    maxpool_fallback: str  # "zero" (SHAP) | "gradient" (Captum) where |Δin| < maxpool_eps
    softmax_head: str  # "rescale" (SHAP) | "captum"


RULE_FLAVOURS = {
    "shap": RuleFlavour(1e-6, 1e-7, "zero", "rescale"),
    "captum": RuleFlavour(1e-10, 1e-10, "gradient", "captum"),
}

RESCALE_OPS = frozenset(
    """relu sigmoid tanh gelu silu softplus elu leaky_relu selu celu hardtanh relu6 mish hardsigmoid
    hardswish prelu clamp clamp_min clamp_max exp exp2 expm1 log log2 log10 log1p sqrt rsqrt reciprocal
    erf erfc sin cos atan asinh sinh cosh abs pow square logsigmoid softsign tanhshrink""".split()
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
    _assert_scalar _local_scalar_dense scalar_tensor _assert_tensor_metadata repeat
    repeat_interleave expand_as unflatten movedim gather index type_as""".split()
)
SOFTMAX_OPS = frozenset({"softmax", "_softmax"})
LOG_SOFTMAX_OPS = frozenset({"log_softmax", "_log_softmax"})
LAYER_NORM_OPS = frozenset({"layer_norm", "native_layer_norm"})
ATTENTION_OPS = frozenset(
    {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
     "_scaled_dot_product_attention_math", "_scaled_dot_product_efficient_attention",
     "_scaled_dot_product_flash_attention"}
)
#: Ops of degree 2 in their tensor arguments: the midpoint rule is exact.
PRODUCT_OPS = frozenset("mul mm bmm matmul baddbmm addmm addbmm einsum linear".split())
#: Ops whose value depends on their tensor inputs' shapes, dtypes and devices only (a causal
#: LM's position ids and masks built from ``inputs_embeds.shape``): never input-dependent.
SHAPE_ONLY_OPS = frozenset(
    "sym_size sym_numel sym_stride new_ones new_zeros new_full new_empty zeros_like ones_like empty_like full_like arange".split()
)
_PLUMBING = frozenset("clone view reshape alias _to_copy to contiguous _unsafe_view flatten squeeze getitem".split())


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


def functional_name(name: str) -> str:
    """``relu_`` -> ``relu``: the out-of-place op of an in-place one."""
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


@dataclass
class RulePlan:
    """Which graph nodes get which rule, and where attributions are taken.

    Attributions are taken at ``attribution_node`` (and, for token ids, at the
    gates of masks computed from the ids; see `explain.output.pair_interpreter.PairInterpreter.gates`).

    Attributes:
        attribution_node: the placeholder (float inputs) or the embedding
            lookup whose output is attributed (token ids).
        rules: node -> rule name (``"rescale"``, ``"product"``, ``"div"``,
            ``"softmax"``, ``"log_softmax"``, ``"layer_norm"``, ``"rms_norm"``,
            ``"attention"``, ``"maxpool"``, ``"softmax_head"``).
        dependent: nodes whose value depends on the attribution node.
        id_only: nodes that depend on the token ids but not through the
            embedding (masks); empty for float inputs.
        masks: softmax node -> (scores node, id-dependent additive mask node).
        flavour: `RULE_FLAVOURS` entry.
        unruled: names of input-dependent nonlinear ops without an exact rule
            (their gradient passes through; additivity is then approximate).
    """

    attribution_node: fx.Node
    rules: dict[fx.Node, str]
    dependent: set[fx.Node]
    id_only: set[fx.Node]
    masks: dict[fx.Node, tuple[fx.Node, fx.Node]]
    flavour: RuleFlavour
    unruled: list[str] = field(default_factory=list)


def plan_rules(graph: fx.Graph, token_ids: bool, flavour: str = "shap") -> RulePlan:
    """Assign rules to the nodes of ``graph`` that depend on the explained input."""
    nodes = list(graph.nodes)
    placeholder = next(n for n in nodes if n.op == "placeholder")
    start = _token_lookup(graph) if token_ids else placeholder
    dependent = {start}
    id_only = {placeholder} if token_ids else set()
    rules: dict[fx.Node, str] = {}
    masks: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    unruled: set[str] = set()
    for node in nodes:
        if node is start or node.op != "call_function" or functional_name(op_name(node) or "") in SHAPE_ONLY_OPS:
            continue
        if not any(a in dependent for a in node.all_input_nodes):
            if any(a in id_only for a in node.all_input_nodes):
                id_only.add(node)
            continue
        dependent.add(node)
        if not isinstance(node.target, torch._ops.OpOverload) or not node.users:
            continue  # python plumbing (getitem, shape arithmetic), dead nodes (make_fx's detach)
        rule = _rule_for(node, dependent, id_only, masks)
        if rule is None:
            base = functional_name(op_name(node) or "")
            if base not in LINEAR_OPS or _varying_factors(node, dependent, id_only) > 1 and base in PRODUCT_OPS:
                unruled.add(base.lstrip("_"))
        else:
            rules[node] = rule
    return RulePlan(start, rules, dependent, id_only - {placeholder}, masks, RULE_FLAVOURS[flavour], sorted(unruled))


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The nodes among ``node``'s arguments (positional and keyword)."""
    return [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]


def _varying_factors(node: fx.Node, dependent: set, id_only: set) -> int:
    return sum(a in dependent or a in id_only for a in tensor_args(node))


def _rule_for(node: fx.Node, dependent: set, id_only: set, masks: dict) -> str | None:
    base = functional_name(op_name(node) or "")
    first = node.args[0] if node.args else None
    first_dependent = isinstance(first, fx.Node) and first in dependent
    varying = _varying_factors(node, dependent, id_only)
    if base in MAXPOOL_OPS and first_dependent:
        return "maxpool"
    if base in RESCALE_OPS and first_dependent and varying == 1:
        return "rescale"
    if base in SOFTMAX_OPS and first_dependent:
        if _feeds_output(node):
            return "softmax_head"
        if op_name(first) in ("add", "add_") and len(first.args) == 2 and all(isinstance(a, fx.Node) for a in first.args):
            a, m = first.args
            if m in dependent and a in id_only:
                a, m = m, a
            if a in dependent and m in id_only:
                masks[node] = (a, m)
        return "softmax"
    if base in LOG_SOFTMAX_OPS and first_dependent:
        return "log_softmax"
    if base in LAYER_NORM_OPS and first_dependent and varying == 1:
        return "layer_norm"
    if base == "rms_norm" and first_dependent and varying == 1:
        return "rms_norm"
    if base in ATTENTION_OPS:
        return "attention"
    if base in PRODUCT_OPS and varying > 1:
        return "product"
    if base == "div" and len(node.args) > 1 and isinstance(node.args[1], fx.Node) and (
        node.args[1] in dependent or node.args[1] in id_only
    ) and not node.kwargs.get("rounding_mode"):
        return "div"
    return None


def _feeds_output(node: fx.Node) -> bool:
    """True when ``node``'s value is the graph output, up to copies and reshapes."""
    while True:
        users = list(node.users)
        if any(u.op == "output" for u in users):
            return True
        if len(users) != 1 or functional_name(op_name(users[0]) or "") not in _PLUMBING:
            return False
        node = users[0]


def _token_lookup(graph: fx.Graph) -> fx.Node:
    """The token-embedding lookup of a captured graph: `explain.loading.export_lm.embedding_lookup`, the one finder
    the gradient methods (`explain.output.model_function.graph_embedding`) and the causal ``.pt2`` path use too."""
    found = embedding_lookup(graph.owning_module) if isinstance(graph.owning_module, fx.GraphModule) else None
    if found is None:
        raise IncompatibleInput(
            "This text model has no embedding lookup on its token ids, so there is no layer to attribute to.",
            "Use occlusion or feature_ablation instead.",
        )
    return found.node
