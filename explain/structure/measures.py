"""What a probe measures: per-module activation statistics, the probe's result, FLOP counting.

Shared by the eager / ``.pt2`` probe (`explain.structure.module_probe`) and the
TorchScript probe (`explain.structure.script_probe`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten

#: fused CPU / math attention kernels FlopCounterMode does not count by itself;
#: counted with its own sdpa formula (2 matmuls: Q·Kᵀ and P·V).
def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _encoder_layer_flop(src_shape, embed_dim, num_heads, qkv_weight_shape, *args, out_shape=None, **kwargs) -> int:
    """Fused ``nn.TransformerEncoderLayer`` fast path: in-projection, Q·Kᵀ, P·V, out-projection, FFN."""
    n, length, e = src_shape
    ffn = args[10] if len(args) > 10 else kwargs.get("ffn_weight_1")  # [F, E]
    f = ffn[0] if ffn is not None else 0
    rows = n * length
    return 2 * rows * e * 3 * e + 2 * 2 * n * length * length * e + 2 * rows * e * e + 2 * 2 * rows * e * f


def _native_mha_flop(query_shape, key_shape, value_shape, embed_dim, *args, out_shape=None, **kwargs) -> int:
    """Fused ``nn.MultiheadAttention`` fast path: projections, Q·Kᵀ, P·V, out-projection."""
    n, lq, e = query_shape
    lk = key_shape[1]
    return 2 * n * lq * e * e + 2 * 2 * n * lk * e * e + 2 * 2 * n * lq * lk * e + 2 * n * lq * e * e


_EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop,
    aten._scaled_dot_product_attention_math: _sdpa_flop,
    aten._transformer_encoder_layer_fwd: _encoder_layer_flop,
    aten._native_multi_head_attention: _native_mha_flop,
}


def make_flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU fused attention."""
    return FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FLOP_FORMULAS))


@dataclass
class ActivationStats:
    """Statistics of one module's output tensor on the probed batch.

    Attributes:
        shape: output shape (batch first).
        dtype: output dtype name.
        mean, std: over all elements.
        zero_fraction: share of elements exactly 0.
        dead_fraction: share of units (dim 1 for 2-D/4-D outputs, last dim
            otherwise) that are 0 for every input and position.
        calls: how often the module ran in one forward (stats are of the last).
    """

    shape: tuple[int, ...]
    dtype: str
    mean: float | None = None
    std: float | None = None
    zero_fraction: float | None = None
    dead_fraction: float | None = None
    calls: int = 1


@dataclass
class ModuleProbe:
    """What one forward pass showed about every module.

    Attributes:
        names: module names in execution (or definition) order; root first.
        types: name -> short class name (``Linear``).
        stats: name -> statistics of its output; missing when unknown.
        flops: name -> FLOPs including submodules (FlopCounterMode's
            convention: a multiply-add is 2 FLOPs); a missing name means
            unknown; None when the format allows no attribution at all.
        total_flops: FLOPs of the whole forward pass.
        notes: plain-language remarks (what could not be measured and why).
    """

    names: list[str]
    types: dict[str, str]
    stats: dict[str, ActivationStats] = field(default_factory=dict)
    flops: dict[str, int] | None = None
    total_flops: int = 0
    notes: list[str] = field(default_factory=list)


def summarise_tensor(t: torch.Tensor, calls: int = 1) -> ActivationStats:
    """Shape, mean, std, zero and dead-unit fractions of one activation."""
    shape = tuple(int(d) for d in t.shape)
    stats = ActivationStats(shape=shape, dtype=str(t.dtype).replace("torch.", ""), calls=calls)
    if t.numel() == 0 or not (t.is_floating_point() or t.dtype == torch.bool):
        return stats
    f = t.detach().float()
    stats.mean = float(f.mean())
    stats.std = float(f.std(unbiased=False))
    zero = f == 0
    stats.zero_fraction = float(zero.float().mean())
    if f.dim() >= 2:
        unit_dim = 1 if f.dim() in (2, 4) else f.dim() - 1
        per_unit = zero.movedim(unit_dim, 0).reshape(f.shape[unit_dim], -1).all(dim=1)  # [units]
        stats.dead_fraction = float(per_unit.float().mean())
    return stats


