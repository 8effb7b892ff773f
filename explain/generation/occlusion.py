"""Occlusion (feature ablation) of a generation: each token, word or sentence of the context replaced by
the pad / unk token, and how much the generated token's log-probability drops.

For generated token t (predicted from positions 0 .. P + t - 1) and each group g of the context (a token,
a word or a sentence, `explain.generation.granularity`, cut at the context's end), the value at every
position of g is log p(token | context) - log p(token | context with g replaced): Captum's
``FeatureAblation`` with the groups as its ``feature_mask`` and the replacement token's id as its
baseline. Every perturbed context of a text goes to the model's process in one call
(`explain.generation.quality.target_probabilities`, which runs them in the largest chunks that fit).

`attribute_texts` is the one place a method name becomes an attribution of generated texts: the gradient
methods of `explain.generation.attribution`, or occlusion here.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from explain.errors import UsageError
from explain.generation.attribution import DEFAULT_STEPS, DEFAULT_TOLERANCE, MAX_STEPS, METHODS, attribute_generation
from explain.generation.contrastive import METHODS as GRADIENT_CONTRAST_METHODS
from explain.generation.contrastive import ContrastAttribution, attribute_contrast, check_alternatives
from explain.generation.granularity import group_spans
from explain.generation.quality import REPLACEMENTS, target_probabilities
from explain.generation.result import GeneratedText, GenerationAttribution
from explain.model import LoadedModel
from explain.output.methods.integrated_gradients import step_budget
from explain.progress import ProgressFn, report_progress

OCCLUSION = "occlusion"
#: Every method a generation can be explained with.
GENERATION_METHODS = (*METHODS, OCCLUSION)
#: The methods a contrast (log p(A) - log p(B)) can be explained with.
CONTRAST_METHODS = (*GRADIENT_CONTRAST_METHODS, OCCLUSION)
#: log(0) stands in as the log of this (a probability float32 cannot tell from zero).
TINY = 1e-45


def occlude_generation(model: LoadedModel, texts: Sequence[GeneratedText], granularity: str = "token",
                       replace: str = "pad", device: str = "auto",
                       progress: ProgressFn | None = None) -> list[GenerationAttribution]:
    """One `GenerationAttribution` per text: values [T, P + T], each group's drop shared by its positions.

    Args:
        texts: prompts and the tokens after them. granularity: ``token`` | ``word`` | ``sentence``.
        replace: the token a group is replaced by, ``pad`` or ``unk``.
        progress: progress(done, total) over texts.

    Raises:
        UsageError: an unknown replacement or granularity. IncompatibleInput: no such token.
    """
    if replace not in REPLACEMENTS:
        raise UsageError(f"Occlusion replaces tokens by {' or '.join(REPLACEMENTS)}, not {replace!r}.")
    out = []
    for n, text in enumerate(texts):
        out.append(_occlude_text(model, text, granularity, replace, device))
        report_progress(progress, n + 1, len(texts))
    return out


def occlude_contrast(model: LoadedModel, texts: Sequence[GeneratedText], alternatives: Sequence[int], step: int = 0,
                     granularity: str = "token", replace: str = "pad", device: str = "auto") -> list[ContrastAttribution]:
    """Occlusion of log p(A) - log p(B) at ``step``: per group of the context, the drop of the difference
    when the group is replaced (shared by its positions); `explain.generation.contrastive.ContrastAttribution`s."""
    if replace not in REPLACEMENTS:
        raise UsageError(f"Occlusion replaces tokens by {' or '.join(REPLACEMENTS)}, not {replace!r}.")
    vocab = len(model.spec.vocabulary or []) or 2**62
    check_alternatives(texts, alternatives, step, vocab)
    out = []
    for text, alt in zip(texts, alternatives):
        began = time.perf_counter()
        n, ids = len(text.prompt_ids) + int(step), text.input_ids
        context, mask, inside = _masks(ids, model, granularity, n)
        token = int(ids[n])
        pa, pb = target_probabilities(model, [context, context], [mask, mask], [token, int(alt)], replace=replace,
                                      device=device)
        diff = np.log(np.maximum(pa, TINY)) - np.log(np.maximum(pb, TINY))  # [G + 1]
        values = np.zeros(n)
        for g, (start, end) in enumerate(inside.tolist()):
            values[start:min(end, n)] = diff[0] - diff[g + 1]
        out.append(ContrastAttribution(context, step, token, int(alt), values, diff[0], float("nan"), float("nan"),
                                       OCCLUSION, {"granularity": granularity, "baseline": replace},
                                       time.perf_counter() - began))
    return out


def _masks(ids: np.ndarray, model: LoadedModel, granularity: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The context ids[:n], its masks [G + 1, n] (row 0: nothing replaced, row g + 1: group g) and its groups [G, 2]."""
    spans = group_spans(ids[:n], model.spec, granularity)  # [G, 2]
    mask = np.zeros((len(spans) + 1, n), bool)
    for g, (start, end) in enumerate(spans.tolist()):
        mask[g + 1, start:end] = True
    return ids[:n], mask, spans


def _occlude_text(model: LoadedModel, text: GeneratedText, granularity: str, replace: str,
                  device: str) -> GenerationAttribution:
    began = time.perf_counter()
    ids, p, t_count = text.input_ids, len(text.prompt_ids), len(text.generated_ids)
    contexts, masks, owners = [], [], []
    for t in range(t_count):  # the context of token t: positions 0 .. P + t - 1
        context, mask, inside = _masks(ids, model, granularity, p + t)
        contexts.append(context)
        masks.append(mask)
        owners.append(inside)
    probs = target_probabilities(model, contexts, masks, ids[p:], replace=replace, device=device) if t_count else []
    values = np.zeros((t_count, ids.size), np.float64)
    logprobs = np.zeros(t_count)
    for t, (row, inside) in enumerate(zip(probs, owners)):
        logp = np.log(np.maximum(row, TINY))  # [G_t + 1]
        logprobs[t] = logp[0]
        for g, (start, end) in enumerate(inside.tolist()):
            values[t, start:min(end, p + t)] = logp[0] - logp[g + 1]
    nan = np.full(t_count, np.nan)
    return GenerationAttribution(ids, p, values, logprobs, nan, nan, OCCLUSION,
                                 {"granularity": granularity, "baseline": replace}, time.perf_counter() - began)


def contrast_texts(model: LoadedModel, texts: Sequence[GeneratedText], alternatives: Sequence[int], step: int = 0,
                   method: str = "integrated_gradients", steps: int = DEFAULT_STEPS, baseline: str = "pad",
                   granularity: str = "token", batch_size: int = 0, device: str = "auto") -> list[ContrastAttribution]:
    """log p(A) - log p(B) at ``step`` of each text attributed by ``method`` (one of `CONTRAST_METHODS`)."""
    if method == OCCLUSION:
        return occlude_contrast(model, texts, alternatives, step, granularity, baseline, device)
    return attribute_contrast(model, texts, alternatives, step, method, steps, baseline, batch_size, device)


def attribute_texts(model: LoadedModel, texts: Sequence[GeneratedText], method: str = "integrated_gradients",
                    steps: int = DEFAULT_STEPS, baseline: str = "pad", granularity: str = "token", batch_size: int = 0,
                    device: str = "auto", progress: ProgressFn | None = None, tolerance: float = DEFAULT_TOLERANCE,
                    per_token: Sequence[Sequence[int] | None] | None = None) -> list[GenerationAttribution]:
    """Each text's generated tokens attributed by ``method`` (one of `GENERATION_METHODS`).

    ``granularity`` decides occlusion's groups; the gradient methods attribute tokens (group them after,
    `explain.generation.granularity.group_values`). ``baseline``: the reference (``pad`` | ``unk`` | ``zero``)
    of integrated gradients, the replacement token (``pad`` | ``unk``) of occlusion. ``tolerance`` and
    ``per_token``: integrated gradients' steps raised per token, or as recorded (`attribute_generation`).
    """
    if method == OCCLUSION:
        return occlude_generation(model, texts, granularity, baseline, device, progress)
    if method not in METHODS:
        raise UsageError(f"Unknown method {method!r} for a generation; use one of {', '.join(GENERATION_METHODS)}.")
    return attribute_generation(model, texts, method, steps, baseline, batch_size, device, progress, tolerance,
                                per_token, step_budget(int(steps), MAX_STEPS))  # the server's operator settings
