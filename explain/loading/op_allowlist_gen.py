"""Generate ``explain/loading/allowed_ops.txt`` from the installed torch.

``python -m explain.loading.op_allowlist_gen --write`` rewrites the file,
``--check`` exits 1 when it differs from what this torch gives. Review the
diff before committing: the file decides which operators an uploaded model
may run.

The rule, in order:

1. **Core ATen**: every ``aten`` operator with an overload tagged
   ``torch.Tag.core`` (the opset ``torch.export`` decomposes to), plus its
   in-place variant (``name_``); ``.out`` variants are overloads of the same
   name and so covered.
2. **Composite operators** that TorchScript and ``torch.export`` (before
   decomposition) really emit: `COMPOSITE_OPS` (layers, views, shape
   queries, activations, pooling, attention, RNNs, ...).
3. **TorchScript language operators**: what ``int``/``float``/``str``/
   ``list``/``dict`` code and the interpreter's builtins compile to
   (`LANGUAGE_OPS`, `PRIM_OPS`).
4. **Higher-order operators** a ``.pt2`` graph may hold (`HIGHER_ORDER_OPS`).

Then anything that can reach outside the tensor world is removed, whichever
list it came from: an operator any of whose overloads takes or returns a
``Storage``, a torchbind object, a ``Capsule``/``Future``/``RRef``/``Await``/
``Stream``, or a ``str`` argument named like a path (`PATH_ARGUMENTS`), and
every name in `explain.loading.op_allowlist.DENIED_NAMES` (files, processes, raw
memory, uninitialised memory, global RNG state).
"""
from __future__ import annotations

import argparse
import sys

from explain.loading.op_allowlist import ALLOWLIST_FILE, DENIED_NAMES

#: ``str`` argument names that mean "a path": an operator taking one is refused.
PATH_ARGUMENTS = frozenset("filename file path filepath fname dirname directory dir f".split())
#: Type names in a schema that mean "outside plain tensors and values".
FORBIDDEN_TYPES = ("Storage", "__torch__.torch.classes", "Capsule", "Future", "RRef", "Await", "Stream",
                   "AnyClassType")

COMPOSITE_OPS = """
linear bilinear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution conv_tbc
batch_norm instance_norm group_norm layer_norm rms_norm native_batch_norm _native_batch_norm_legit_functional
dropout feature_dropout alpha_dropout feature_alpha_dropout native_dropout
softmax log_softmax _masked_softmax matmul mm bmm addmm baddbmm addbmm addmv mv dot vdot outer einsum tensordot
flatten unflatten embedding embedding_bag _embedding_bag embedding_renorm
scaled_dot_product_attention _scaled_dot_product_attention_math _scaled_dot_product_flash_attention_for_cpu
_native_multi_head_attention _transformer_encoder_layer_fwd _nested_tensor_from_mask
_nested_tensor_from_mask_left_aligned to_padded_tensor
size dim numel stride contiguous is_contiguous is_floating_point is_complex is_nonzero is_same_size
view view_as reshape reshape_as expand_as t transpose swapaxes swapdims movedim moveaxis unbind chunk split
tensor_split narrow squeeze unsqueeze stack hstack vstack dstack concat concatenate flip roll rot90
repeat_interleave tile broadcast_to broadcast_tensors triu tril masked_fill masked_select clamp_min clamp_max
clip numpy_T matrix_H mT mH adjoint lift_fresh lift_fresh_copy
zeros ones zeros_like ones_like new_zeros new_ones new_full rand_like randn_like randint
randint_like linspace eye to type_as detach clone copy fill zero item
relu6 hardsigmoid hardswish hardtanh silu mish selu celu softplus softshrink hardshrink threshold glu
log_sigmoid log_sigmoid_forward prelu _prelu_kernel rrelu logit
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices adaptive_avg_pool2d adaptive_avg_pool3d
adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
upsample_nearest1d upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d
_upsample_nearest_exact3d upsample_linear1d upsample_bicubic2d upsample_trilinear3d _upsample_bilinear2d_aa
_upsample_bicubic2d_aa grid_sampler affine_grid_generator pixel_shuffle pixel_unshuffle channel_shuffle
native_channel_shuffle pad _pad_circular _pad_enum reflection_pad1d replication_pad1d
lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
cosine_similarity pairwise_distance cdist pdist norm frobenius_norm linalg_vector_norm linalg_norm renorm
std std_mean var_mean logsumexp cumprod cummax cummin diff argsort topk kthvalue median one_hot bucketize
searchsorted index_add index_copy index_fill take take_along_dim nan_to_num isfinite square sgn frac exp2
addcmul addcdiv lerp rsub floor_divide true_divide fmax fmin hypot logaddexp xlogy erfinv
__and__ __or__ __xor__ __lshift__ __rshift__ __iand__ __ior__ __ixor__ __ilshift__ __irshift__
bitwise_left_shift bitwise_right_shift dequantize all im2col fractional_max_pool2d fractional_max_pool3d
max_unpool2d max_unpool3d _upsample_lanczos2d_aa cross_entropy_loss nll_loss nll_loss_nd nll_loss2d mse_loss l1_loss
smooth_l1_loss huber_loss binary_cross_entropy binary_cross_entropy_with_logits kl_div mode bernoulli normal uniform
multinomial
_assert_async _assert_scalar _assert_tensor_metadata _functional_assert_async sym_constrain_range
sym_constrain_range_for_size
"""

LANGUAGE_OPS = """
Bool Complex ComplexImplicit Delete Float FloatImplicit Int IntImplicit ScalarImplicit Size __contains__
__derive_index __getitem__ __interpolate __is__ __isnot__ __not__ __range_length __round_to_zero_floordiv
__upsample __upsample_bilinear __upsample_nearest _infer_size _list_to_tensor _ncf_unsqueeze _ncf_view
_no_grad_embedding_renorm_ _no_grad_fill_ _no_grad_normal_ _no_grad_uniform_ _no_grad_zero_ _pack_sequence
_set_item _size_if_not_equal _tensor_to_list _unwrap_optional append as_tensor bin broadcast_shapes capitalize
center chr clear count cpu degrees device dict divmod element_size endswith expandtabs extend fabs find
floordiv format gamma get get_autocast_dtype has_torch_function hash hex insert is_autocast_cpu_enabled
is_autocast_enabled is_grad_enabled is_non_overlapping_and_dense is_scripting is_strides_like_format isalnum
isalpha isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle isupper items join keys
len list ljust lower lstrip mathremainder modf oct ord partition percentFormat pop popitem radians remove
replace reverse rfind rindex rjust rpartition rsplit rstrip set_grad_enabled setdefault sorted splitlines
startswith str strip swapcase tensor title update upper values warn zfill
"""

PRIM_OPS = """
Constant GetAttr SetAttr If Loop ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex
DictConstruct DictIndex Uninitialized unchecked_cast unchecked_unwrap_optional RaiseException
dtype device layout data grad requires_grad name itemsize nbytes type index is_nested is_cuda is_cpu is_xla
is_xpu is_sparse is_sparse_csr is_mkldnn is_mps is_mtia is_quantized is_vulkan is_ipu is_meta is_maia
max min abs rangelist tolist NumToTensor StringIndex EnumName EnumValue isinstance IfThenElse
ModuleContainerIndex
"""

HIGHER_ORDER_OPS = """
cond while_loop map_impl scan associative_scan wrap_with_set_grad_enabled wrap_with_autocast
"""


def generate_text() -> str:
    """The allowlist file's text for the installed torch (deterministic)."""
    import torch

    schemas: dict[str, list] = {}
    for schema in torch._C._jit_get_all_schemas():
        schemas.setdefault(schema.name, []).append(schema)
    aten = {name.split("::", 1)[1] for name in schemas if name.startswith("aten::")}
    wanted = {f"aten::{n}" for n in _core_ops(torch)}
    wanted |= {f"aten::{n}_" for n in _core_ops(torch) if f"{n}_" in aten}
    for block, namespace in ((COMPOSITE_OPS, "aten"), (LANGUAGE_OPS, "aten"), (PRIM_OPS, "prim")):
        for name in block.split():
            wanted.add(f"{namespace}::{name}")
            if namespace == "aten" and f"{name}_" in aten:
                wanted.add(f"aten::{name}_")
    structural = {f"prim::{n}" for n in PRIM_OPS.split()} - set(schemas)  # graph nodes without a schema
    unknown = sorted(op for op in wanted if op not in schemas and op not in structural)
    if unknown:
        raise SystemExit(f"These curated operators do not exist in torch {torch.__version__}: {', '.join(unknown)}")
    allowed = sorted(op for op in wanted if _is_safe(op, schemas.get(op, [])))
    from torch._ops import _higher_order_ops

    higher = sorted(f"higher_order::{n}" for n in HIGHER_ORDER_OPS.split() if n in _higher_order_ops)
    header = [
        "# Operators an uploaded TorchScript or .pt2 model may call (see explain/loading/op_allowlist.py).",
        f"# Generated by `python -m explain.loading.op_allowlist_gen --write` from torch {torch.__version__.split('+')[0]}:",
        "# core ATen + in-place variants, composite ops TorchScript/export emit, TorchScript language ops,",
        "# higher-order ops; minus anything taking a Storage, a path or a torchbind object, and",
        "# explain.loading.op_allowlist.DENIED_NAMES. Do not edit by hand; review the diff when it changes.",
        f"# {len(allowed) + len(higher)} operators.",
    ]
    return "\n".join(header + allowed + higher) + "\n"


def _core_ops(torch) -> set[str]:
    """Names of ``aten`` operators with at least one ``core``-tagged overload."""
    names = set()
    for full in torch._C._dispatch_get_all_op_names():
        if not full.startswith("aten::"):
            continue
        name, _, overload = full[len("aten::"):].partition(".")
        op = getattr(getattr(torch.ops.aten, name), overload or "default")
        if torch.Tag.core in op.tags:
            names.add(name)
    return names


def _is_safe(op: str, schemas: list) -> bool:
    """False for a denied name or any overload that reaches files, storages or foreign objects."""
    if op.split("::", 1)[1] in DENIED_NAMES:
        return False
    for schema in schemas:
        for arg in schema.arguments:
            kind = str(arg.type)
            if kind.rstrip("?") == "str" and arg.name in PATH_ARGUMENTS:
                return False
            if any(t in kind for t in FORBIDDEN_TYPES):
                return False
        if any(any(t in str(r.type) for t in FORBIDDEN_TYPES) for r in schema.returns):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Write or check the allowlist file; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m explain.loading.op_allowlist_gen", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"rewrite {ALLOWLIST_FILE.name}")
    group.add_argument("--check", action="store_true", help="exit 1 when the file differs from torch's")
    args = parser.parse_args(argv)
    text = generate_text()
    if args.write:
        ALLOWLIST_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {ALLOWLIST_FILE} ({text.count(chr(10)) - 6} operators)")
        return 0
    current = ALLOWLIST_FILE.read_text(encoding="utf-8") if ALLOWLIST_FILE.exists() else ""
    if current != text:
        print(f"{ALLOWLIST_FILE} differs from what torch gives; run with --write and review the diff.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
