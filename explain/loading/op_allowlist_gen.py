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

And operators that trust their arguments are removed (issue 19): every
``*_backward`` operator and every internal ``aten::_*`` one (`is_internal`;
``max_pool2d_with_indices_backward`` writes at whatever index it is given),
except the reviewed `INTERNAL_EXCEPTIONS`, and every operator that crashes
the process in ``tests/test_op_fuzz.py`` (`CRASHING_OPS`). That test calls
every operator left on the list with crafted arguments in child processes.
Crashes that no removal can fix without refusing the models we support (a
dtype int out of range, a zero head count, a packed RNN's ``batch_sizes``)
are its ``UNGUARDED``: they need a check where the arguments are known.
"""
from __future__ import annotations

import argparse
import sys

from explain.loading.op_allowlist import ALLOWLIST_FILE, DENIED_NAMES, parse_allowlist

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

#: Internal (``aten::_*``) operators kept although `is_internal`: each is needed by a model we
#: support, and ``tests/test_op_fuzz.py`` calls it with crafted arguments (huge and negative
#: indices, odd strides, storage offsets, empty and one-element tensors) without a crash, but
#: for that test's ``UNGUARDED`` arguments (``_to_copy`` with a dtype of -1, the attention
#: kernels with zero heads).
#: No ``*_backward`` operator is here: a forward graph never needs one. Left off although a
#: decomposed .pt2 may call them: ``_softmax`` / ``_log_softmax`` (their ``.out`` writes past a
#: zero-stride ``out``), ``_native_batch_norm_legit`` (``no_stats`` with ``training=False``
#: dereferences the missing statistics), ``_native_batch_norm_legit_no_training`` / ``_functional``
#: (a ``running_mean`` of the wrong size), ``_fft_r2c`` / ``_fft_c2r`` (an unchecked ``dim``),
#: ``_pdist_forward`` (an empty 3-d input; ``pdist`` checks it): all segfault.
INTERNAL_EXCEPTIONS = frozenset(
    # TorchScript language: dict / list assignment (``d[k] = v``) and Optional refinement.
    """_set_item _unwrap_optional"""
    # Scripted nn.MultiheadAttention / nn.TransformerEncoder(Layer) (the sentiment sample):
    # their fast path is in the code the archive carries.
    """ _native_multi_head_attention _transformer_encoder_layer_fwd _nested_tensor_from_mask
    _nested_tensor_from_mask_left_aligned"""
    # Scripted F.interpolate / nn.Upsample: every mode's kernel is named in its code.
    """ _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d _upsample_bilinear2d_aa
    _upsample_bicubic2d_aa _upsample_lanczos2d_aa"""
    # torch.jit.trace of any convolution.
    """ _convolution"""
    # torch.export: runtime checks (dtype conversions, dynamic-shape guards).
    """ _assert_tensor_metadata _assert_scalar"""
    # Core ATen forward operators a .pt2 decomposed with run_decompositions() calls
    # (.to, EmbeddingBag, adaptive pooling, .item(), cdist).
    """ _to_copy _embedding_bag _adaptive_avg_pool2d _adaptive_avg_pool3d _local_scalar_dense
    _cdist_forward""".split()
)

#: Operators that crashed the process in ``tests/test_op_fuzz.py`` (a signal, not an error),
#: with the arguments that did it; off the list whatever rule admitted them.
CRASHING_OPS: dict[str, str] = {
    "__interpolate": "SIGSEGV: scale_factor=[] (an empty scale list is indexed)",
    "__upsample_bilinear": "SIGSEGV: scale_factor=[]",
    "native_batch_norm": "SIGSEGV: training=False without running_mean / running_var",
    "avg_pool3d": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
    "max_pool3d_with_indices": "SIGABRT (heap corruption): .out into an overlapping out tensor",
    "reflection_pad2d": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
    "reflection_pad3d": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
    "replication_pad2d": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
    "replication_pad3d": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
    "log_sigmoid_forward": "SIGSEGV: .output with a zero-stride buffer",
    "median": "SIGSEGV: .dim_values with values aliasing self",
    "repeat_interleave": "SIGSEGV: .self_Tensor with one huge repeat",
    "embedding_bag": "SIGSEGV: .padding_idx with empty offsets and per_sample_weights",
    "col2im": "SIGABRT (heap corruption): .out into a zero-stride out tensor",
}

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
    unreviewed = sorted(op for op in INTERNAL_EXCEPTIONS | set(CRASHING_OPS) if f"aten::{op}" not in schemas)
    if unreviewed:
        raise SystemExit(f"These reviewed operators do not exist in torch {torch.__version__}: {', '.join(unreviewed)}")
    allowed = sorted(op for op in wanted if _is_safe(op, schemas.get(op, [])) and not is_internal(op)
                     and op.split("::", 1)[1] not in CRASHING_OPS)
    from torch._ops import _higher_order_ops

    higher = sorted(f"higher_order::{n}" for n in HIGHER_ORDER_OPS.split() if n in _higher_order_ops)
    header = [
        "# Operators an uploaded TorchScript or .pt2 model may call (see explain/loading/op_allowlist.py).",
        f"# Generated by `python -m explain.loading.op_allowlist_gen --write` from torch {torch.__version__.split('+')[0]}:",
        "# core ATen + in-place variants, composite ops TorchScript/export emit, TorchScript language ops,",
        "# higher-order ops; minus anything taking a Storage, a path or a torchbind object,",
        "# explain.loading.op_allowlist.DENIED_NAMES, *_backward and internal aten::_* operators (but the",
        "# reviewed INTERNAL_EXCEPTIONS) and the fuzz's CRASHING_OPS. Do not edit by hand; review the diff.",
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


def is_internal(op: str) -> bool:
    """True for a backward or internal ``aten`` operator (``aten::*_backward*``, ``aten::_x``) not reviewed.

    ``aten::__x`` (TorchScript's Python dunders and language builtins) is not internal.
    """
    namespace, _, name = op.partition("::")
    if namespace != "aten" or name in INTERNAL_EXCEPTIONS:
        return False
    return "_backward" in name or (name.startswith("_") and not name.startswith("__"))


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
        print(f"wrote {ALLOWLIST_FILE} ({len(parse_allowlist(text))} operators)")
        return 0
    current = ALLOWLIST_FILE.read_text(encoding="utf-8") if ALLOWLIST_FILE.exists() else ""
    if current != text:
        print(f"{ALLOWLIST_FILE} differs from what torch gives; run with --write and review the diff.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
