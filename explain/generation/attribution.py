"""Each generated token's log-probability attributed to every position before it.

Token t of a text (prompt of P tokens, then T generated) is predicted at position
P + t - 1 from the embeddings of positions 0 .. P + t - 1; its target is
log p(token P + t | everything before). The methods work on the input embeddings
(``inputs_embeds``, as Captum's ``LayerIntegratedGradients`` on
``get_input_embeddings()`` does; position embeddings and embedding scaling stay the model's):

- ``integrated_gradients``: (x - b) * sum_k w_k grad f(b + a_k (x - b)) summed over the
  embedding dimension, with Captum's Gauss-Legendre steps; b is the reference
  (`explain.generation.reference`) at *every* earlier position, prompt and generated, so
  sum(values[t]) = f_t(x) - f_t(b) up to the quadrature (`completeness_error`);
- ``saliency``: |grad f(x)| summed over the embedding dimension;
- ``input_x_gradient``: x * grad f(x) summed over the embedding dimension.
- ``deeplift`` / ``deep_shap``: DeepLIFT against the reference / averaged over a background,
  exact rules on the decoder's captured graph (`explain.generation.deeplift`).

The grid has one row per (generated token, step), token-major through
`explain.output.engine.Engine.map_chunks` (the largest chunks that fit, halved on out of
memory). A causal LM's output at position P + t - 1 reads no later position, so a chunk
runs ONE forward per distinct step k of its rows, over the longest prefix its tokens need,
with the LM head only at the positions they predict from (``logits_to_keep``): every
token's log-probability at that point comes from the same pass. The chunk's tokens then
need one vector-Jacobian product each; they go through autograd as one batched backward
(``is_grads_batched``: vmap over the cotangents), so a chunk of T tokens x S steps costs S
forward rows and T x S backward rows in a few large kernels, not T x S forward-backward
passes. A chunk of one row (``batch_size=1``) is the one-target-at-a-time computation.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from explain.errors import UsageError
from explain.generation.causal_lm import attribution_lm, causal_lm, device_of, record_precision, target_logprob_grid
from explain.generation.reference import BASELINES, reference_embeddings
from explain.generation.result import GeneratedText, GenerationAttribution
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.engine import Engine
from explain.output.methods.integrated_gradients import quadrature
from explain.progress import ProgressFn, report_progress

#: The methods a generation can be explained with.
METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "deeplift", "deep_shap")
#: The methods that compare with the ``baseline`` reference embeddings (deep_shap: its own background).
REFERENCE_METHODS = ("integrated_gradients", "deeplift")
#: The methods whose values add up to a log-probability change (their ``completeness_error`` is defined).
COMPLETE_METHODS = ("integrated_gradients", "deeplift", "deep_shap")
#: The methods of exact rules on the decoder's captured graph (`explain.generation.deeplift`).
RULE_METHODS = ("deeplift", "deep_shap")
#: Gauss-Legendre nodes by default. The keycopy sample's path has a near-step (log p jumps ~6 nats between
#: alpha 0.2 and 0.3, where the copy head starts to tell the key from the pad): 32 nodes left completeness
#: errors up to 0.9 on its default prompt, 128 leave 1e-3 (held-out prompts: median 2e-4, worst 0.4). Batched
#: (one forward per step for all tokens) 128 cost 1.35x the time of 32 over 30 of its prompts, not 4x.
DEFAULT_STEPS = 128
MAX_STEPS = 1024


def checked_settings(method: str, baseline: str, steps: int, what: str, methods: Sequence[str] = METHODS) -> int:
    """The gradient methods' settings checked in one place (a generation, a contrast): ``method`` one of
    ``methods``, ``baseline`` one of `BASELINES`, steps 1 .. `MAX_STEPS`; returns the steps used (1 unless IG)."""
    if method not in methods:
        raise UsageError(f"Unknown method {method!r} for {what}; use one of {', '.join(methods)}.")
    if baseline not in BASELINES:
        raise UsageError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    steps = int(steps) if method == "integrated_gradients" else 1
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"steps must be 1 .. {MAX_STEPS}, not {steps}.")
    return steps


@in_model_process
def attribute_generation(model: LoadedModel, texts: Sequence[GeneratedText], method: str = "integrated_gradients",
                         steps: int = DEFAULT_STEPS, baseline: str = "pad", batch_size: int = 0,
                         device: str = "auto", progress: ProgressFn | None = None) -> list[GenerationAttribution]:
    """One `GenerationAttribution` per text: values [T, P + T], log-probabilities, completeness errors.

    Args:
        texts: prompts and the tokens after them (`explain.generation.greedy.generate_greedy`, or a
            continuation given and scored by `explain.generation.continuation.force_continuations`).
        method: one of `METHODS`. steps: integrated gradients' path steps (1 .. `MAX_STEPS`).
        baseline: the reference of integrated gradients, one of `BASELINES`.
        batch_size: rows per pass (0: as many as fit). device: ``auto`` | ``cpu`` | ``cuda``.
        progress: progress(done, total) over the grid's rows; raising in it cancels.
    """
    steps = checked_settings(method, baseline, steps, "a generation")
    lm = causal_lm(model)
    engine = Engine(device=device, precision="fp32", batch_size=batch_size)
    model.to(engine.device)
    own, lm = lm, attribution_lm(lm, engine.device)  # a half-precision model: a float32 copy on the CPU
    total = sum(len(t.generated_ids) for t in texts) * steps
    done = [0]

    def advance(rows: int) -> None:
        done[0] += rows
        report_progress(progress, done[0], total)

    results = [_attribute_text(lm, model, text, method, steps, baseline, engine, advance) for text in texts]
    report_progress(progress, total, total)
    return [record_precision(r, own, lm) for r in results]


def _attribute_text(lm: nn.Module, model: LoadedModel, text: GeneratedText, method: str, steps: int,
                    baseline: str, engine: Engine, advance) -> GenerationAttribution:
    if method in RULE_METHODS and len(text.generated_ids):  # exact rules on a captured graph
        from explain.generation.deeplift import attribute_rules

        return attribute_rules(lm, model, text, method, baseline, engine, advance)
    began = time.perf_counter()
    device = device_of(lm)
    seq = torch.as_tensor(text.input_ids, device=device)  # [P + T]
    p, t_count = len(text.prompt_ids), len(text.generated_ids)
    length = p + t_count - 1  # the last generated token is never an input
    params = {"steps": steps, "baseline": baseline} if method == "integrated_gradients" else {}
    if t_count == 0:
        empty = np.zeros((0,), np.float32)
        return GenerationAttribution(text.input_ids, p, np.zeros((0, p), np.float32), empty, empty, empty, method, params)
    with torch.no_grad():
        x = lm.get_input_embeddings()(seq[:length]).float()  # [L, D]
    base = reference_embeddings(lm, model, x, baseline) if method == "integrated_gradients" else torch.zeros_like(x)
    alphas, weights = (quadrature(steps) if method == "integrated_gradients"
                       else (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)))
    alphas, weights = alphas.to(device, torch.float32), weights.to(device, torch.float32)
    diff = x - base  # [L, D]
    acc = torch.zeros(t_count, length, x.shape[1], device=device)  # [T, L, D] weighted gradient sums
    targets = seq[p:]  # [T]
    dtype = lm.get_input_embeddings().weight.dtype
    n_rows = t_count * steps

    def work(lo: int, hi: int) -> None:
        r = torch.arange(lo, hi, device=device)
        tok, k = r // steps, r % steps  # token-major: [R] each
        toks, ks = torch.unique(tok), torch.unique(k)  # sorted: [n_t], [n_k]
        cut = p + int(toks[-1])  # positions 0 .. P + t_max - 1 are all the chunk's tokens read
        points = (base[:cut] + alphas[ks].view(-1, 1, 1) * diff[:cut]).requires_grad_(True)  # [n_k, cut, D]
        with torch.enable_grad():
            logp = target_logprob_grid(lm, points.to(dtype), p + toks - 1, targets[toks])  # [n_k, n_t]
        picks = torch.zeros(len(toks), len(ks), len(toks), device=device)  # [n_t, n_k, n_t]: one cotangent per token
        at_tok = torch.searchsorted(toks, tok)
        picks[at_tok, torch.searchsorted(ks, k), at_tok] = 1.0  # only the chunk's own (token, step) rows
        grads = token_gradients(logp, points, picks)  # [n_t, n_k, cut, D]
        if method == "saliency":
            grads = grads.abs()
        acc[toks, :cut] += torch.einsum("tkld,k->tld", grads.float(), weights[ks])
        advance(hi - lo)

    # a row's point, as every engine caller counts it (CPU: ~8 MiB of points a chunk; a GPU sizes chunks from a
    # probe's peak memory, the batched backward included; out of memory halves them). Counting the row's
    # activations instead cut a CPU chunk to 1-3 rows of a 4-layer, 256-wide Llama: one forward per row again.
    row_bytes = length * x.shape[1] * 4
    engine.map_chunks(n_rows, work, row_bytes, report=False)
    if method == "integrated_gradients":
        values = (acc * diff).sum(-1)  # [T, L]
    elif method == "saliency":
        values = acc.sum(-1)
    else:
        values = (acc * x).sum(-1)
    positions = torch.arange(length, device=device)
    values = values * (positions[None] < (p + torch.arange(t_count, device=device))[:, None])  # 0 at >= P + t
    with torch.no_grad():
        wanted = p + torch.arange(t_count, device=device) - 1
        logprobs = _target_logprobs(lm, x[None].to(dtype), wanted, targets)  # [T]: one pass over the text
        if method == "integrated_gradients":
            base_logprobs = _target_logprobs(lm, base[None].to(dtype), wanted, targets)
            error = (values.double().sum(-1) - (logprobs.double() - base_logprobs.double())).abs()
        else:
            base_logprobs = error = torch.full((t_count,), float("nan"), device=device)
    full = torch.zeros(t_count, p + t_count, device=device)
    full[:, :length] = values
    notes = [f"chunks of {min(engine.chunk_sizes or [0])}-{max(engine.chunk_sizes or [0])} rows"] if engine.chunk_sizes else []
    return GenerationAttribution(
        text.input_ids, p, full.cpu().numpy(), logprobs.cpu().numpy(), base_logprobs.cpu().numpy(),
        error.float().cpu().numpy(), method, params, time.perf_counter() - began, notes + list(engine.notes))


def _target_logprobs(lm: nn.Module, points: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[j] | points[0, :positions[j] + 1]) of one text (points [1, L, D]): [K]."""
    return target_logprob_grid(lm, points, positions, targets)[0]


def token_gradients(logp: torch.Tensor, points: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian products of ``logp`` [B, K] with each cotangent ``picks[j]`` [B, K] with respect
    to ``points`` [B, L, D]: [J, B, L, D], all J through one batched backward (vmap over the cotangents)."""
    if picks.shape[0] == 1:
        (grads,) = torch.autograd.grad(logp, points, picks[0])
        return grads[None]
    (grads,) = torch.autograd.grad(logp, points, picks, is_grads_batched=True)
    return grads
