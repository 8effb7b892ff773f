"""Attention weights per layer and head, for every model format that has them.

`capture_attention(model, inputs)` returns `AttentionMaps`: an array
[layer, batch, head, query, key] plus one name per layer.

- eager models: every ``nn.MultiheadAttention`` is made to return its
  per-head weights (a forward pre-hook sets ``need_weights=True,
  average_attn_weights=False``; ``nn.TransformerEncoderLayer`` passes
  ``need_weights=False`` and, in eval mode, may take a fused fast path, which
  is switched off meanwhile). Other modules that return attention
  probabilities (a tuple holding a [N, (H,) Lq, Lk] tensor with rows summing to
  1) are captured too. All hooks are removed afterwards, also on error.
- ``torch.export`` programs: the graph is rewritten so the probabilities are
  extra outputs (:mod:`explain.structure.attention_export`).
- TorchScript: no hooks exist, but the fused attention kernels it calls
  (``scaled_dot_product_attention`` variants and the transformer fast-path
  kernels) are intercepted at the dispatcher and the probabilities recomputed
  from their arguments. Layer names come from the ``MultiheadAttention``
  submodules in definition order. Explicit attention written as plain
  matmul + softmax inside TorchScript cannot be told apart from other
  softmaxes at the dispatcher and is not captured.

Image models with attention (a Vision Transformer) attend over patches: `patch_grid`
finds the patch grid from the number of tokens and the image's shape (the tokens
before the patches, such as ``[CLS]``, counted apart), `PatchGrid.labels` names
positions by (row, col), and `image_rollout` turns the attention rollout from
``[CLS]`` to the patches into a map over the input image, for the Structure page
and the report.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from explain.errors import IncompatibleInput, one_line
from explain.generation.causal_lm import hidden_states_out_of_reach
from explain.inputs.images import upsample
from explain.kernels import no_mha_fastpath
from explain.loading.huggingface import HFClassifier
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.structure.attention_export import attention_probs, rewrite_attention_graph
from explain.structure.attention_summary import compute_rollout

aten = torch.ops.aten


@dataclass
class AttentionMaps:
    """Attention probabilities of one batch.

    Attributes:
        weights: float32 [layer, batch, head, query, key]; each row over keys
            sums to 1 (masked keys get 0).
        layer_names: qualified module name per layer.
        source: ``hooks`` (eager), ``graph`` (rewritten export graph) or
            ``dispatch`` (TorchScript kernels intercepted).
        inputs: the model-ready batch the weights belong to.
        notes: remarks for the reader.
    """

    weights: np.ndarray
    layer_names: list[str]
    source: str
    inputs: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[2])

    @property
    def num_tokens(self) -> int:
        return int(self.weights.shape[3])


#: how many tokens may come before the patches, in the order `patch_grid` tries them: [CLS] (ViT),
#: none (mean-pooled), [CLS] + distillation (DeiT), [CLS] + 4 registers (DINOv2 with registers).
LEADING_TOKENS = (1, 0, 2, 5)


@dataclass(frozen=True)
class PatchGrid:
    """How an image model's tokens lie on its input: ``extra`` tokens first ([CLS], ...), then
    ``rows`` × ``cols`` patches in row-major order.

    Attributes:
        rows, cols: the patch grid (H / patch, W / patch).
        extra: tokens before the patches (1: ``[CLS]``; 0: patches only).
    """

    rows: int
    cols: int
    extra: int

    @property
    def num_tokens(self) -> int:
        return self.extra + self.rows * self.cols

    def labels(self) -> list[str]:
        """One axis label per token: ``[CLS]`` (``[token i]`` for several extra tokens), then
        each patch by its (row, col)."""
        first = ["[CLS]"] if self.extra == 1 else [f"[token {i}]" for i in range(self.extra)]
        return first + [f"({r}, {c})" for r in range(self.rows) for c in range(self.cols)]


def patch_grid(num_tokens: int, image_shape: Sequence[int]) -> PatchGrid | None:
    """The patch grid of an image model's ``num_tokens`` on images of ``image_shape`` (``(..., H, W)``):
    the split of ``num_tokens`` into leading tokens (`LEADING_TOKENS`, [CLS] first) and a grid of
    at least 2 patches shaped like the image (rows · W == cols · H). None when no split fits (the
    positions are not patches of this image)."""
    h, w = int(image_shape[-2]), int(image_shape[-1])
    for extra in LEADING_TOKENS:
        patches = num_tokens - extra
        if patches < 2:
            continue
        rows = round(math.sqrt(patches * h / w))
        if rows >= 1 and patches % rows == 0 and rows * w == (patches // rows) * h:
            return PatchGrid(rows, patches // rows, extra)
    return None


def image_rollout(weights: np.ndarray, grid: PatchGrid, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Attention rollout (`explain.structure.attention_summary.compute_rollout`) from ``[CLS]`` to
    the patches of one image, on the patch grid and over the image.

    The rollout row of the first token (the mean row when there is no extra token) without the
    extra tokens, reshaped to the grid and upsampled nearest-neighbour to the image, so each
    patch's square carries its share.

    Args:
        weights: [layer, head, query, key] attention of one input (query == key == ``grid.num_tokens``).
        grid: its `patch_grid`.
        height, width: the input image's size.

    Returns:
        (patches [rows, cols], heat [height, width]): the share of the rollout each patch gets
        (with the extra tokens' share, they sum to 1).
    """
    weights = np.asarray(weights)
    if weights.shape[-1] != grid.num_tokens or weights.shape[-2] != grid.num_tokens:
        raise ValueError(f"Attention over {weights.shape[-1]} tokens does not fit a grid of {grid.num_tokens}.")
    roll = compute_rollout(weights[:, None])[0]  # [q, k]
    row = roll[0] if grid.extra else roll.mean(axis=0)
    patches = row[grid.extra:].reshape(grid.rows, grid.cols)
    return patches, upsample(patches, height, width)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------
@in_model_process
def capture_attention(model: LoadedModel, inputs: np.ndarray | torch.Tensor) -> AttentionMaps:
    """Attention weights of ``model`` on ``inputs``.

    Raises:
        IncompatibleInput: the model has no attention this format lets us see,
            with a one-line reason why.
    """
    if model.format in ("export", "torchscript", "huggingface"):
        reason = attention_unavailable_reason(model)  # a clearer message than an empty capture
        if reason:
            raise IncompatibleInput(reason)
    x = model.as_tensor(inputs)
    step = model.chunk_limit(x.shape[0])  # a static-batch .pt2 or a vetted user graph runs chunk by chunk
    chunks = [_fit_fixed_batch(model, x[start : start + step]) for start in range(0, x.shape[0], step)]
    if model.format == "export":
        maps = _capture_graph(model.module, chunks)
    else:
        capture = _capture_dispatch if model.format == "torchscript" else _capture_eager
        runs = [(capture(model.module, xc), n) for xc, n in chunks]
        maps = runs[0][0]
        maps.weights = np.concatenate([m.weights[:, :n] for m, n in runs], axis=1)
    maps.inputs = x.cpu().numpy()
    return maps


#: the name `explain.report.analysis` calls; prefer `capture_attention`.
attention_maps = capture_attention


@in_model_process
def attention_unavailable_reason(model: LoadedModel) -> str | None:
    """A one-line reason when ``model`` clearly has no capturable attention (cheap, no run)."""
    out_of_reach = hidden_states_out_of_reach(model)  # a .pt2 causal LM: logits only
    if out_of_reach:
        return out_of_reach
    if model.format == "export":
        from explain.structure.attention_export import find_attention_nodes

        if not find_attention_nodes(model.module.graph):
            return "This exported graph contains no attention (no scaled_dot_product_attention or q·kᵀ softmax)."
        return None
    if model.format == "torchscript":
        kinds = {getattr(m, "original_name", "") for _, m in model.module.named_modules()}
        if not kinds & {"MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer"}:
            return (
                "This TorchScript model has no nn.MultiheadAttention; attention written as plain "
                "matmul + softmax cannot be located in TorchScript."
            )
        return None
    if isinstance(model.module, HFClassifier):  # a Hugging Face model returns its own, if it has any
        if model.module.has_attention:
            return None
        kind = getattr(model.module.model.config, "model_type", "Hugging Face")
        return f"This {kind} model has no attention layers (a convolutional network): there are no maps to show."
    if model.modality != "text" and not any(isinstance(m, nn.MultiheadAttention) for m in model.module.modules()):
        return "This model has no attention layers (no nn.MultiheadAttention)."
    return None


def _fit_fixed_batch(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(chunk padded to the fixed or next vetted batch size, real rows); x: [n, ...] with n <= that size."""
    n = x.shape[0]
    padded = model.padded_rows(n)
    if not padded or n == padded:
        return x, n
    return torch.cat([x, x[-1:].expand(padded - n, *x.shape[1:])]), n


def _stack(layers: list[torch.Tensor], names: list[str], source: str, notes: list[str]) -> AttentionMaps:
    if not layers:
        raise IncompatibleInput("The model ran, but no attention weights were produced.")
    shapes = {tuple(t.shape) for t in layers}
    if len(shapes) > 1:
        raise IncompatibleInput(
            f"Attention layers have different shapes ({', '.join(map(str, sorted(shapes)))}); "
            "they cannot be shown as one grid."
        )
    weights = torch.stack([t.detach().float().cpu() for t in layers]).numpy()
    return AttentionMaps(weights=weights, layer_names=names, source=source, notes=notes)


def _as_batch_head(t: torch.Tensor, batch: int) -> torch.Tensor:
    """[N, H, Lq, Lk] from [N, H, Lq, Lk], [N, Lq, Lk], [N*H, Lq, Lk] or [H, Lq, Lk] (unbatched)."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        if t.shape[0] == batch:
            return t.unsqueeze(1)
        if t.shape[0] % batch == 0:
            return t.reshape(batch, t.shape[0] // batch, *t.shape[1:])
        return t.unsqueeze(0)
    raise IncompatibleInput(f"Unexpected attention shape {tuple(t.shape)}.")


# ---------------------------------------------------------------------------
# eager: hooks
# ---------------------------------------------------------------------------
def _force_weights_hook(_mod, args, kwargs):
    """MultiheadAttention.forward(q, k, v, key_padding_mask, need_weights, attn_mask, average_attn_weights, ...)."""
    args = list(args)
    for pos, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
        if len(args) > pos:
            args[pos] = value
        else:
            kwargs[key] = value
    return tuple(args), kwargs


def _looks_like_probs(t: object, batch: int) -> bool:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (3, 4) or t.shape[0] != batch:
        return False
    if t.shape[-1] < 2 or t.numel() == 0 or (t.dim() == 3 and t.shape[-1] != t.shape[-2]):
        return False  # a 3-D tensor must be square (self-attention) so class/vocab probabilities do not pass
    d = t.detach()
    rows = d.sum(-1)
    return bool((d >= 0).all()) and bool(((rows - 1).abs() < 1e-3).logical_or(rows == 0).all())


@contextlib.contextmanager
def attention_hooks(module: nn.Module, batch: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Collect ``(module name, weights)`` of every attention call while active; hooks always removed."""
    captured: list[tuple[str, torch.Tensor]] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    handles = []

    def on_output(name: str, is_mha: bool):
        def hook(_mod, _args, output):
            if not isinstance(output, (tuple, list)):
                return
            candidates = output[1:2] if is_mha else output
            for t in candidates:
                if isinstance(t, torch.Tensor) and (is_mha or _looks_like_probs(t, batch)):
                    key = (t.data_ptr(), tuple(t.shape))
                    if key not in seen:  # a parent passing its child's weights on
                        seen.add(key)
                        captured.append((name, t.detach()))
                    return

        return hook

    try:
        for name, sub in module.named_modules():
            is_mha = isinstance(sub, nn.MultiheadAttention)
            if is_mha:
                handles.append(sub.register_forward_pre_hook(_force_weights_hook, with_kwargs=True))
            handles.append(sub.register_forward_hook(on_output(name, is_mha)))
        with no_mha_fastpath():
            yield captured
    finally:
        for h in handles:
            h.remove()


def _capture_eager(module: nn.Module, x: torch.Tensor) -> AttentionMaps:
    batch = x.shape[0]
    if isinstance(module, HFClassifier):  # Hugging Face: output_attentions=True
        with torch.no_grad():
            try:
                layers, names = module.attention_maps(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise IncompatibleInput(f"The model raised on these inputs: {one_line(exc, 200, typed=False)}") from None
        return _stack([_as_batch_head(t, batch) for t in layers], names, "hooks", [])
    with attention_hooks(module, batch) as captured, torch.no_grad():
        _run_model(module, x)
    if not captured:
        raise IncompatibleInput(
            "This model has no attention layers that return weights "
            "(no nn.MultiheadAttention and no module returning attention probabilities)."
        )
    names = [n or "(model)" for n, _ in captured]
    layers = [_as_batch_head(t, batch) for _, t in captured]
    return _stack(layers, names, "hooks", [])


def _run_model(module, x):
    try:
        return module(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise IncompatibleInput(f"The model raised on these inputs: {one_line(exc, 200, typed=False)}") from None


# ---------------------------------------------------------------------------
# torch.export: graph rewrite
# ---------------------------------------------------------------------------
def _capture_graph(gm: torch.fx.GraphModule, chunks: list[tuple[torch.Tensor, int]]) -> AttentionMaps:
    """Rewrite once, run every chunk ``(padded batch, real rows)``, keep the real rows."""
    rewritten = rewrite_attention_graph(gm)
    if rewritten is None:
        raise IncompatibleInput(
            "This exported graph contains no attention (no scaled_dot_product_attention or q·kᵀ softmax)."
        )
    parts: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for x, n in chunks:
            outs = _run_model(rewritten.module, x)
            parts.append([_as_batch_head(t, x.shape[0])[:n] for t in outs[rewritten.num_outputs :]])
    layers = [torch.cat(per_layer) for per_layer in zip(*parts)]
    notes = []
    if "softmax" in rewritten.kinds:
        notes.append("Some layers were found as a softmax over q·kᵀ in the graph.")
    return _stack(layers, rewritten.layer_names, "graph", notes)


# ---------------------------------------------------------------------------
# TorchScript: intercept fused kernels at the dispatcher
# ---------------------------------------------------------------------------
def _bind_schema(func, args, kwargs) -> dict:
    bound = dict(kwargs or {})
    for arg, value in zip(func._schema.arguments, args):
        bound[arg.name] = value
    return bound


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    n, length, e = t.shape  # [N, L, E] -> [N, H, L, E/H]
    return t.view(n, length, heads, e // heads).transpose(1, 2)


def _fastpath_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Fast-path masks use True = do not attend; sdpa bool masks the opposite."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = ~mask
    if mask.dim() == 2 and mask.shape[0] == batch:  # key padding [N, Lk]
        return mask[:, None, None, :]
    return mask


def _probs_from_kernel(func, args, kwargs) -> torch.Tensor | None:
    """Recompute attention probabilities from a fused kernel's arguments."""
    a = _bind_schema(func, args, kwargs)
    packet = func.overloadpacket
    if packet in (aten._transformer_encoder_layer_fwd,):
        src = a["src"]
        x = F.layer_norm(src, (src.shape[-1],), a["norm_weight_1"], a["norm_bias_1"], a["eps"]) if a["norm_first"] else src
        q, k, _ = F.linear(x, a["qkv_weight"], a["qkv_bias"]).chunk(3, dim=-1)
        heads = int(a["num_heads"])
        return attention_probs(_split_heads(q, heads), _split_heads(k, heads), _fastpath_mask(a.get("mask"), src.shape[0]))
    if packet in (aten._native_multi_head_attention,):
        w_q, w_k, _ = a["qkv_weight"].chunk(3)
        b_q, b_k, _ = a["qkv_bias"].chunk(3)
        heads = int(a["num_head"])
        q = _split_heads(F.linear(a["query"], w_q, b_q), heads)
        k = _split_heads(F.linear(a["key"], w_k, b_k), heads)
        return attention_probs(q, k, _fastpath_mask(a.get("mask"), q.shape[0]))
    mask = a.get("attn_mask", a.get("attn_bias"))
    return attention_probs(a["query"], a["key"], mask, bool(a.get("is_causal", False)), a.get("scale"),
                           bool(a.get("enable_gqa", False)))


_KERNELS = {
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_attention_math,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._transformer_encoder_layer_fwd,
    aten._native_multi_head_attention,
}


class _KernelSpy(TorchDispatchMode):
    """Records attention probabilities of every fused attention kernel call."""

    def __init__(self):
        super().__init__()
        self.captured: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _KERNELS:
            with torch.no_grad():
                probs = _probs_from_kernel(func, args, kwargs or {})
            if probs is not None:
                self.captured.append(probs.detach())
        return func(*args, **(kwargs or {}))


def _capture_dispatch(module, x: torch.Tensor) -> AttentionMaps:
    spy = _KernelSpy()
    with spy, torch.no_grad():
        _run_model(module, x)
    if not spy.captured:
        raise IncompatibleInput(
            "No attention kernel ran in this TorchScript model; attention written as plain "
            "matmul + softmax cannot be located in TorchScript (use the eager or .pt2 file)."
        )
    mha = [n for n, m in module.named_modules() if getattr(m, "original_name", type(m).__name__) == "MultiheadAttention"]
    notes = ["TorchScript: weights recomputed from the attention kernels' inputs (no hooks exist)."]
    if len(mha) == len(spy.captured):
        names = mha
    else:
        names = [f"attention call {i}" for i in range(len(spy.captured))]
        notes.append("Layer names are call numbers: the calls did not match the MultiheadAttention modules.")
    layers = [_as_batch_head(t, x.shape[0]) for t in spy.captured]
    return _stack(layers, names, "dispatch", notes)
