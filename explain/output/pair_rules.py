"""DeepLift rules as functions of (explained, reference) value pairs.

Every function here takes each input as a pair ``(x, r)``: ``x`` is the value
on the explained rows (it carries autograd), ``r`` the value on the paired
reference rows (plain tensor, row s of ``r`` is the reference of row s of
``x``). It returns the output pair. The backward pass of ``x`` carries
DeepLift *multipliers*: for every rule, Σ multiplier · (x - r) over the inputs
equals y_x - y_r ("summation to delta"), so, chained through linear ops, the
attributions of a graph add up to f(x) - f(r).

Rules (documented ones, see the ``explain.output.aten_rules`` docstring):

- `rescale`: elementwise y = g(x): multiplier (g(x) - g(r)) / (x - r), the
  local gradient at the midpoint (x + r) / 2 where |x - r| < eps (Shrikumar
  et al. 2017; SHAP's and Captum's ``nonlinear``, which take it at x; the
  midpoint's error is third order in |x - r|). Non-finite differences (both sides at -inf, as a
  masked attention score) give multiplier 0.
- `product`: y = p(a, b) bilinear (elementwise product, matmul, bmm): the
  gradient at the midpoint ((a_x + a_r) / 2, (b_x + b_r) / 2). That is the
  Shapley value of the two factors, Δy = Δa · mean(b) + mean(a) · Δb, and it is
  exact for every function quadratic in its inputs (a · a included).
- `softmax`: in the log domain, exp(s - k - log Σ exp(s - k)) (k a per-row
  constant shared by both sides; softmax is shift invariant): rescale, sum,
  rescale (log), linear, rescale (exp); a mask enters as a gate (product).
- `layer_norm`: centring (linear), variance = mean(c · c) (product), rsqrt
  (rescale), c · rsqrt (product), affine (linear).
- `attention`: q kᵀ (product), softmax as above, attn · v (product).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Pair = tuple[torch.Tensor, torch.Tensor]


class _RescaleFn(torch.autograd.Function):
    """y = g(x); backward multiplies by (g(x) - g(r)) / (x - r), gradient where x ≈ r."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, yr: torch.Tensor, fn: Callable, eps: float) -> torch.Tensor:
        y = fn(x)
        dx = x - r  # [S, ...] row s paired with reference row s
        small = dx.abs() < eps
        # (y - yr) / dx, yr = fn(r) computed once by `rescale`; a non-finite dx or ratio gives 0
        # (finite / inf is 0, inf / inf and nan are nan): one pass instead of isfinite masks
        ratio = torch.nan_to_num_((y - yr).div_(torch.where(small, 1.0, dx)), nan=0.0, posinf=0.0, neginf=0.0)
        ctx.fn = fn
        # the midpoint only where the backward needs it (some x ≈ r): most chunks have none
        ctx.save_for_backward((x + r) / 2 if bool(small.any()) else None, ratio, small)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        mid, ratio, small = ctx.saved_tensors
        out = grad * ratio
        if mid is not None:
            with torch.enable_grad():
                xx = mid.detach().requires_grad_(True)
                (local,) = torch.autograd.grad(ctx.fn(xx), xx, grad)
            out = torch.where(small, local, out)
        return out, None, None, None, None


class _MidpointFn(torch.autograd.Function):
    """y = p(*args); backward is p's gradient at the midpoint of the explained and reference args."""

    @staticmethod
    def forward(ctx: Any, fn: Callable, n: int, *tensors: torch.Tensor) -> torch.Tensor:
        xs, rs = tensors[:n], tensors[n:]
        ctx.fn = fn
        ctx.save_for_backward(*((x + r) / 2 for x, r in zip(xs, rs)))
        return fn(*xs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        mids = [m.detach().requires_grad_(True) for m in ctx.saved_tensors]
        with torch.enable_grad():
            grads = torch.autograd.grad(ctx.fn(*mids), mids, grad, allow_unused=True)
        return (None, None, *grads, *(None for _ in mids))


def rescale(pair: Pair, fn: Callable[[torch.Tensor], torch.Tensor], eps: float) -> Pair:
    """Elementwise ``fn`` with the rescale rule."""
    x, r = pair
    with torch.no_grad():
        yr = fn(r)
    if not x.requires_grad:
        return fn(x), yr
    return _RescaleFn.apply(x, r, yr, fn, eps), yr


def product(fn: Callable[..., torch.Tensor], *pairs: Pair) -> Pair:
    """``fn`` of degree 2 in its inputs (a product, a matmul) with the midpoint rule.

    With two factors this is their Shapley split Δ(ab) = Δa · (b_x + b_r) / 2 +
    (a_x + a_r) / 2 · Δb; for any quadratic ``fn`` it is exact.
    """
    with torch.no_grad():
        yr = fn(*(p[1] for p in pairs))
    if sum(p[0].requires_grad for p in pairs) < 2:
        return fn(*(p[0] for p in pairs)), yr  # one varying factor: linear, the gradient is exact
    xs = [p[0] for p in pairs]
    return _MidpointFn.apply(fn, len(pairs), *xs, *(p[1] for p in pairs)), yr


def linear(fn: Callable[..., torch.Tensor], *pairs: Pair) -> Pair:
    """An op linear in its pair inputs (its gradient is exact)."""
    with torch.no_grad():
        yr = fn(*(p[1] for p in pairs))
    return fn(*(p[0] for p in pairs)), yr


def constant(t: torch.Tensor) -> Pair:
    return t, t


def _shift(s: Pair, dim: int, gate: Pair | None) -> torch.Tensor:
    """A shift shared by both sides: the largest score the gate keeps on either side."""
    with torch.no_grad():
        kept = [side if gate is None else side.masked_fill(g == 0, -math.inf) for side, g in zip(s, gate or (0, 0))]
        k = torch.maximum(kept[0].detach().amax(dim, keepdim=True), kept[1].amax(dim, keepdim=True))
        return torch.where(torch.isfinite(k), k, torch.zeros_like(k))  # [.., 1, ..]


def _exp_capped(t: torch.Tensor) -> torch.Tensor:
    """exp(min(t, 0)): equal to exp wherever the gate keeps a score (t <= 0 there).

    Scores the gate drops on a side may lie above the shift; capping them
    keeps both factors of the gate's product rule in [0, 1], so a mask that
    opens gets a bounded share (the plain exp would give it exp(t) · Δgate).
    """
    return torch.exp(t.clamp(max=0.0))


def softmax(s: Pair, dim: int, gate: Pair | None, eps: float) -> Pair:
    """softmax(s) (times ``gate`` and renormalised) in the log domain (exact).

    y = exp(t - log Σ exp(t) · gate) · gate with t = s - k: rescale (exp),
    product (· gate), sum, rescale (log), linear, rescale (exp), product. The
    log keeps every multiplier bounded where the two sides' sums differ by
    orders of magnitude (1 / z would not). ``gate`` in [0, 1] is exp(mask):
    softmax(s + m) = exp(s - k) · exp(m) / Σ, finite even for -inf masks.
    """
    k = _shift(s, dim, gate)
    t = linear(lambda v: v - k, s)
    e = rescale(t, _exp_capped, eps)
    if gate is not None:
        e = product(torch.mul, e, gate)
    log_z = rescale(linear(lambda v: v.sum(dim, keepdim=True), e), torch.log, eps)
    y = rescale(linear(torch.sub, t, log_z), _exp_capped, eps)
    return y if gate is None else product(torch.mul, y, gate)


def log_softmax(s: Pair, dim: int, eps: float) -> Pair:
    """s - k - log Σ exp(s - k) (exact)."""
    k = _shift(s, dim, None)
    shifted = linear(lambda t: t - k, s)
    z = linear(lambda t: t.sum(dim, keepdim=True), rescale(shifted, torch.exp, eps))
    return linear(torch.sub, shifted, rescale(z, torch.log, eps))


def layer_norm(x: Pair, ndims: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps_ln: float, eps: float) -> tuple[Pair, Pair, Pair]:
    """(normalised, mean, rstd) pairs of a layer norm over the last ``ndims`` dims (exact)."""
    dims = tuple(range(-ndims, 0))
    mean = linear(lambda t: t.mean(dims, keepdim=True), x)
    c = linear(torch.sub, x, mean)
    var = linear(lambda t: t.mean(dims, keepdim=True) + eps_ln, product(torch.mul, c, c))
    rstd = rescale(var, torch.rsqrt, eps)
    y = product(torch.mul, c, rstd)
    if weight is not None:
        y = linear(lambda t: t * weight, y)
    if bias is not None:
        y = linear(lambda t: t + bias, y)
    return y, mean, rstd


def rms_norm(x: Pair, ndims: int, weight: torch.Tensor | None, eps_norm: float, eps: float) -> Pair:
    dims = tuple(range(-ndims, 0))
    ms = linear(lambda t: t.mean(dims, keepdim=True) + eps_norm, product(torch.mul, x, x))
    y = product(torch.mul, x, rescale(ms, torch.rsqrt, eps))
    return y if weight is None else linear(lambda t: t * weight, y)


def attention(q: Pair, k: Pair, v: Pair, bias: Pair | None, gate: Pair | None, scale: float | None,
              is_causal: bool, enable_gqa: bool, eps: float) -> Pair:
    """scaled_dot_product_attention (no dropout) with exact rules.

    ``bias`` is an additive float mask that does not change between the sides
    (added to the scores); ``gate`` a multiplicative one (bool masks, and the
    exp of float masks that change with the token ids).
    """
    scale = 1 / math.sqrt(q[0].shape[-1]) if scale is None else scale
    if enable_gqa and k[0].shape[-3] != q[0].shape[-3]:
        rep = q[0].shape[-3] // k[0].shape[-3]
        k = linear(lambda t: t.repeat_interleave(rep, -3), k)
        v = linear(lambda t: t.repeat_interleave(rep, -3), v)
    s = product(lambda a, b: (a * scale) @ b.transpose(-2, -1), q, k)  # [.., Lq, Lk]
    if bias is not None:
        s = linear(torch.add, s, bias)
    if is_causal:
        lq, lk = s[0].shape[-2:]
        causal = torch.ones(lq, lk, dtype=s[0].dtype, device=s[0].device).tril()
        gate = constant(causal) if gate is None else linear(lambda t: t * causal, gate)
    p = softmax(s, -1, gate, eps)
    return product(torch.matmul, p, v)
