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
need one vector-Jacobian product each over the one graph (`token_gradients`: on a GPU one batched
backward, ``is_grads_batched``; on the CPU one plain backward each, faster there), so a chunk of
T tokens x S steps costs S forward rows and T x S backward rows, not T x S forward-backward
passes. A chunk of one row (``batch_size=1``) is the one-target-at-a-time computation.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain.attribution import step_raising_text
from explain.errors import UsageError
from explain.generation.causal_lm import attribution_lm, causal_lm, device_of, record_precision, target_logprob_grid
from explain.generation.reference import BASELINES, reference_embeddings
from explain.generation.result import GeneratedText, GenerationAttribution, chunk_note
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.engine import Engine
from explain.output.methods.integrated_gradients import quadrature, step_budget, step_raising_record
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
#: Integrated gradients' completeness tolerance (nats: |sum(values) - (log p(x) - log p(reference))|): tokens above
#: it get more steps (`attribute_generation`). 0.01 nats is a 1 % error of the probability ratio.
DEFAULT_TOLERANCE = 0.01


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
                         device: str = "auto", progress: ProgressFn | None = None, tolerance: float = DEFAULT_TOLERANCE,
                         per_token: Sequence[Sequence[int] | None] | None = None,
                         budget: tuple[int, float] | None = None) -> list[GenerationAttribution]:
    """One `GenerationAttribution` per text: values [T, P + T], log-probabilities, completeness errors.

    Args:
        texts: prompts and the tokens after them (`explain.generation.greedy.generate_greedy`, or a
            continuation given and scored by `explain.generation.continuation.force_continuations`).
        method: one of `METHODS`. steps: integrated gradients' path steps (1 .. `MAX_STEPS`).
        baseline: the reference of integrated gradients, one of `BASELINES`.
        batch_size: rows per pass (0: as many as fit). device: ``auto`` | ``cpu`` | ``cuda``.
        progress: progress(done, total) over the grid's rows; raising in it cancels.
        tolerance: integrated gradients' completeness tolerance (nats; 0: none): the generated tokens whose
            completeness error is above it are integrated again with doubled steps, alone, within the budget
            of every IG (`explain.output.methods.integrated_gradients.step_budget`: the asked steps x
            ``GLASSBOX_IG_STEP_BUDGET``, ``GLASSBOX_IG_STEP_SECONDS`` of raising over the call); a text's
            ``params["per_token"]`` then records each token's steps and ``params["step_raising"]`` what raising did.
        per_token: per text, the steps each token used (a record's ``params["per_token"]["steps"]``; None: as
            asked): each text is computed as recorded, exactly, and the tolerance raises nothing.
        budget: (the most steps, the seconds of raising): default `step_budget` read here; a caller outside the
            model's process (`explain.generation.occlusion.attribute_texts`) passes the one read in the server.
    """
    steps = checked_settings(method, baseline, steps, "a generation")
    if per_token is not None and len(per_token) != len(texts):
        raise UsageError(f"per_token has {len(per_token)} records for {len(texts)} texts; give one per text.")
    lm = causal_lm(model)
    engine = Engine(device=device, precision="fp32", batch_size=batch_size)
    model.to(engine.device)
    own, lm = lm, attribution_lm(lm, engine.device)  # a half-precision model: a float32 copy on the CPU
    total = sum(len(t.generated_ids) for t in texts) * steps
    done = [0]

    def advance(rows: int) -> None:  # raised rows do not move the bar past the end; it still cancels
        done[0] = min(done[0] + rows, total)
        report_progress(progress, done[0], total)

    limit, seconds = budget if budget is not None else step_budget(steps, MAX_STEPS)
    raising = _Raising(float(tolerance) if method == "integrated_gradients" else 0.0, int(limit), float(seconds))
    results = [_attribute_text(lm, model, text, method, steps, baseline, engine, advance, raising,
                               None if per_token is None else per_token[i]) for i, text in enumerate(texts)]
    report_progress(progress, total, total)
    return [record_precision(r, own, lm) for r in results]


@dataclass
class _Raising:
    """The completeness tolerance of one `attribute_generation` call and its budget (the most steps, the
    seconds spent raising over all its texts)."""

    tolerance: float
    limit: int
    seconds: float
    spent: float = 0.0


def _attribute_text(lm: nn.Module, model: LoadedModel, text: GeneratedText, method: str, steps: int,
                    baseline: str, engine: Engine, advance, raising: _Raising,
                    recorded: Sequence[int] | None = None) -> GenerationAttribution:
    if method in RULE_METHODS and len(text.generated_ids):  # exact rules on a captured graph
        from explain.generation.deeplift import attribute_rules

        return attribute_rules(lm, model, text, method, baseline, engine, advance)
    began = time.perf_counter()
    device = device_of(lm)
    seq = torch.as_tensor(text.input_ids, device=device)  # [P + T]
    p, t_count = len(text.prompt_ids), len(text.generated_ids)
    length = p + t_count - 1  # the last generated token is never an input
    ig = method == "integrated_gradients"
    params = {"steps": steps, "baseline": baseline, "tolerance": raising.tolerance} if ig else {}
    if t_count == 0:
        empty = np.zeros((0,), np.float32)
        return GenerationAttribution(text.input_ids, p, np.zeros((0, p), np.float32), empty, empty, empty, method, params)
    with torch.no_grad():
        x = lm.get_input_embeddings()(seq[:length]).float()  # [L, D]
    base = reference_embeddings(lm, model, x, baseline) if ig else torch.zeros_like(x)
    diff = x - base  # [L, D]
    targets = seq[p:]  # [T]
    dtype = lm.get_input_embeddings().weight.dtype
    # a row's point, as every engine caller counts it (CPU: ~8 MiB of points a chunk; a GPU sizes chunks from a
    # probe's peak memory, the batched backward included; out of memory halves them). Counting the row's
    # activations instead cut a CPU chunk to 1-3 rows of a 4-layer, 256-wide Llama: one forward per row again.
    row_bytes = length * x.shape[1] * 4

    def integrate(sel: torch.Tensor, k_steps: int, report=advance) -> torch.Tensor:
        """The weighted gradient sums [len(sel), L, D] of the tokens ``sel`` (sorted) along ``k_steps`` steps."""
        if ig:
            alphas, weights = quadrature(k_steps)
        else:
            alphas, weights = torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        alphas, weights = alphas.to(device, torch.float32), weights.to(device, torch.float32)
        acc = torch.zeros(len(sel), length, x.shape[1], device=device)  # [n, L, D]

        def work(lo: int, hi: int) -> None:
            r = torch.arange(lo, hi, device=device)
            j, k = r // k_steps, r % k_steps  # token-major: [R] each, j indexes sel
            js, ks = torch.unique(j), torch.unique(k)  # sorted: [n_t], [n_k]
            toks = sel[js]  # the chunk's tokens, sorted
            cut = p + int(toks[-1])  # positions 0 .. P + t_max - 1 are all the chunk's tokens read
            points = (base[:cut] + alphas[ks].view(-1, 1, 1) * diff[:cut]).requires_grad_(True)  # [n_k, cut, D]
            with torch.enable_grad():
                logp = target_logprob_grid(lm, points.to(dtype), p + toks - 1, targets[toks])  # [n_k, n_t]
            picks = torch.zeros(len(js), len(ks), len(js), device=device)  # [n_t, n_k, n_t]: one cotangent per token
            at_tok = torch.searchsorted(js, j)
            picks[at_tok, torch.searchsorted(ks, k), at_tok] = 1.0  # only the chunk's own (token, step) rows
            grads = token_gradients(logp, points, picks)  # [n_t, n_k, cut, D]
            if method == "saliency":
                grads = grads.abs()
            acc[js, :cut] += torch.einsum("tkld,k->tld", grads.float(), weights[ks])
            report(hi - lo)

        engine.map_chunks(len(sel) * k_steps, work, row_bytes, report=False)
        return acc

    positions = torch.arange(length, device=device)
    readable = positions[None] < (p + torch.arange(t_count, device=device))[:, None]  # [T, L]: 0 at >= P + t

    def values_of(acc: torch.Tensor) -> torch.Tensor:  # [T, L, D] -> [T, L]
        summed = (acc * diff).sum(-1) if ig else acc.sum(-1) if method == "saliency" else (acc * x).sum(-1)
        return summed * readable

    def hold(_rows: int) -> None:  # a raised round's chunks: the bar stays where the asked steps left it, still cancels
        advance(0)

    every = torch.arange(t_count, device=device)
    used = np.full(t_count, steps)
    if ig and recorded is not None:  # as recorded: the rounds the tolerance ran, each over the tokens it raised
        used = np.asarray(recorded, dtype=np.int64).reshape(-1)
        if used.shape != (t_count,) or used.min() < 1 or used.max() > MAX_STEPS:
            raise UsageError(f"per_token steps must be {t_count} values in 1 .. {MAX_STEPS}.")
        acc = torch.zeros(t_count, length, x.shape[1], device=device)
        for k_steps in np.unique(used):
            sel = torch.as_tensor(np.flatnonzero(used >= k_steps), device=device)
            acc[sel] = integrate(sel, int(k_steps), advance if k_steps == used.min() else hold)
    else:
        acc = integrate(every, steps)
    values = values_of(acc)
    with torch.no_grad():
        wanted = p + torch.arange(t_count, device=device) - 1
        logprobs = _target_logprobs(lm, x[None].to(dtype), wanted, targets)  # [T]: one pass over the text
        if ig:
            base_logprobs = _target_logprobs(lm, base[None].to(dtype), wanted, targets)
        else:
            base_logprobs = torch.full((t_count,), float("nan"), device=device)

    def error_of(values: torch.Tensor) -> torch.Tensor:  # [T]; NaN where the method defines none
        if not ig:
            return torch.full((t_count,), float("nan"), device=device)
        return (values.double().sum(-1) - (logprobs.double() - base_logprobs.double())).abs()

    error = error_of(values)
    notes = []
    if ig and recorded is None and raising.tolerance > 0:
        def redo(bad: np.ndarray, k_steps: int) -> np.ndarray:  # the tokens ``bad`` along k_steps: the new errors [T]
            sel = torch.as_tensor(bad, device=device)
            acc[sel] = integrate(sel, k_steps, hold)
            return error_of(values_of(acc)).cpu().numpy()

        used, stopped_by, current = _raise_steps(raising, error.cpu().numpy(), steps, redo)
        values = values_of(acc)
        error = error_of(values)
        if current > steps or stopped_by:
            params["step_raising"] = step_raising_record(steps, raising.limit, raising.seconds, used, stopped_by,
                                                         error.cpu().numpy())
            notes.append(step_raising_text(params, "token(s)"))
    elif ig and recorded is not None and np.any(used != steps):
        notes.append("steps as recorded per token: " + ", ".join(f"{int(s)}" for s in used) + " (tolerance not applied).")
    if ig and np.any(used != steps):
        params["per_token"] = {"steps": [int(s) for s in used]}
    full = torch.zeros(t_count, p + t_count, device=device)
    full[:, :length] = values
    chunks = chunk_note(engine.chunk_sizes)
    return GenerationAttribution(
        text.input_ids, p, full.cpu().numpy(), logprobs.cpu().numpy(), base_logprobs.cpu().numpy(),
        error.float().cpu().numpy(), method, params, time.perf_counter() - began, chunks + notes + list(engine.notes))


def _raise_steps(raising: _Raising, error: np.ndarray, steps: int, redo) -> tuple[np.ndarray, str | None, int]:
    """The tolerance loop of one text: the tokens whose completeness ``error`` [T] is above ``raising.tolerance``
    integrated again with doubled steps (``redo(tokens, steps) -> errors [T]``) until none is or the budget stops
    it: (the steps each token used [T], the budget that stopped it or None, the most steps reached)."""
    used, current, stopped_by = np.full(error.shape, steps), steps, None
    while np.any(error > raising.tolerance):
        if current * 2 > raising.limit:
            stopped_by = "steps"
            break
        if raising.spent >= raising.seconds:
            stopped_by = "seconds"
            break
        current *= 2
        bad = np.flatnonzero(error > raising.tolerance)
        began = time.perf_counter()
        error = redo(bad, current)
        raising.spent += time.perf_counter() - began
        used[bad] = current
    return used, stopped_by, current


def _target_logprobs(lm: nn.Module, points: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[j] | points[0, :positions[j] + 1]) of one text (points [1, L, D]): [K]."""
    return target_logprob_grid(lm, points, positions, targets)[0]


def token_gradients(logp: torch.Tensor, points: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian products of ``logp`` [B, K] with each cotangent ``picks[j]`` [B, K] with respect
    to ``points`` [B, L, D]: [J, B, L, D]. On a GPU all J go through one batched backward (vmap over the
    cotangents: a few large kernels); on the CPU, J plain backwards over the one graph, which measured 1.15-1.5x
    faster there (`benchmarks/generation.py`: the batched backward's J-fold gradients of every activation
    leave the caches; one backward's fit)."""
    if picks.shape[0] > 1 and points.is_cuda:
        (grads,) = torch.autograd.grad(logp, points, picks, is_grads_batched=True)
        return grads
    last = picks.shape[0] - 1
    return torch.stack([torch.autograd.grad(logp, points, pick, retain_graph=j < last)[0]
                        for j, pick in enumerate(picks)])  # [J, B, L, D]
