"""Why A rather than B: log p(A) - log p(B) at one step of a text, attributed to every position before it.

At step t of a text (prompt of P tokens, then the tokens after it) the model predicts token P + t
(A: the one generated or given) from positions 0 .. P + t - 1; B is an alternative token. The target
f(x) = log p(A | x) - log p(B | x) is attributed on the input embeddings with the methods of
`explain.generation.attribution` (integrated gradients along the same path and reference, saliency
|grad f|, input x gradient), its (step) grid through `explain.output.engine.Engine.map_chunks`. The
methods linear in the target give attribution(A) - attribution(B); saliency is the gradient of the
difference, not a difference of saliencies; integrated gradients are complete for the difference:
sum(values) = f(x) - f(reference) up to the quadrature.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput, UsageError
from explain.generation.attribution import DEFAULT_STEPS, checked_settings
from explain.generation.causal_lm import attribution_lm, causal_lm, device_of, keeps_logits, precision_params
from explain.generation.prompts import encode_texts, token_strings, unknown_token
from explain.generation.reference import reference_embeddings
from explain.generation.result import GeneratedText
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.engine import Engine
from explain.output.methods.integrated_gradients import quadrature
from explain.progress import ProgressFn, report_progress

#: The methods a contrast is attributed with (the gradient methods of `explain.generation.attribution`).
METHODS = ("integrated_gradients", "saliency", "input_x_gradient")


@dataclass
class ContrastAttribution:
    """log p(token) - log p(alternative) at one step, attributed to the positions before it.

    Attributes:
        context_ids: int64 [P + t] the positions the step reads (prompt, then the tokens before it).
        step: t, the index of the contrasted token among the tokens after the prompt.
        token, alternative: A (the text's token at the step) and B.
        values: float32 [P + t] the attribution of f = log p(A) - log p(B) to each position.
        difference: f at the text's own embeddings.
        baseline_difference: f at the reference (NaN for methods without one).
        completeness_error: |sum(values) - (difference - baseline_difference)| (NaN where undefined).
        method, params: what computed it. seconds: its wall time.
    """

    context_ids: np.ndarray
    step: int
    token: int
    alternative: int
    values: np.ndarray
    difference: float
    baseline_difference: float
    completeness_error: float
    method: str
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.context_ids = np.asarray(self.context_ids, dtype=np.int64).reshape(-1)
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if self.values.shape != self.context_ids.shape:
            raise ValueError("values must hold one value per context position")
        self.step, self.token, self.alternative = int(self.step), int(self.token), int(self.alternative)
        self.difference, self.baseline_difference = float(self.difference), float(self.baseline_difference)
        self.completeness_error = float(self.completeness_error)


@in_model_process
def attribute_contrast(model: LoadedModel, texts: Sequence[GeneratedText], alternatives: Sequence[int],
                       step: int = 0, method: str = "integrated_gradients", steps: int = DEFAULT_STEPS,
                       baseline: str = "pad", batch_size: int = 0, device: str = "auto",
                       progress: ProgressFn | None = None) -> list[ContrastAttribution]:
    """One `ContrastAttribution` per text: its token at ``step`` against its alternative.

    Args:
        texts: prompts and the tokens after them (generated or teacher-forced).
        alternatives: one token id per text (B).
        step: which token after the prompt is contrasted (0: the first).
        method, steps, baseline, batch_size, device: as `explain.generation.attribution.attribute_generation`.
        progress: progress(done, total) over the grid's rows.

    Raises:
        UsageError: an unknown method or baseline, steps out of range, a step past a text's tokens,
            an alternative per text missing, or an alternative equal to the token.
    """
    steps = checked_settings(method, baseline, steps, "a contrast", METHODS)
    if len(alternatives) != len(texts):
        raise UsageError(f"{len(alternatives)} alternatives for {len(texts)} prompts; give one per prompt.")
    lm = causal_lm(model)
    check_alternatives(texts, alternatives, step, lm.get_input_embeddings().weight.shape[0])
    engine = Engine(device=device, precision="fp32", batch_size=batch_size)
    model.to(engine.device)
    own, lm = lm, attribution_lm(lm, engine.device)  # a half-precision model: a float32 copy on the CPU
    total, done = len(texts) * steps, [0]

    def advance(rows: int) -> None:
        done[0] += rows
        report_progress(progress, done[0], total)

    out = [_contrast_one(lm, model, text, int(alt), int(step), method, steps, baseline, engine, advance)
           for text, alt in zip(texts, alternatives)]
    report_progress(progress, total, total)
    return [dataclasses.replace(c, params={**c.params, **precision_params(own, lm)}) for c in out]


def check_alternatives(texts: Sequence[GeneratedText], alternatives: Sequence[int], step: int, vocab: int) -> None:
    """Refuse a step past a text's tokens, an alternative outside the vocabulary or equal to the token.

    Raises:
        UsageError / IncompatibleInput: which, for which text.
    """
    if len(alternatives) != len(texts):
        raise UsageError(f"{len(alternatives)} alternatives for {len(texts)} prompts; give one per prompt.")
    for i, (text, alt) in enumerate(zip(texts, alternatives)):
        if not 0 <= int(step) < len(text.generated_ids):
            raise UsageError(f"Text {i + 1} has {len(text.generated_ids)} tokens after its prompt; "
                             f"step {step} is not one of them.")
        if not 0 <= int(alt) < vocab:
            raise IncompatibleInput(f"Alternative {i + 1} ({int(alt)}) is outside the model's {vocab} tokens.")
        if int(alt) == int(text.generated_ids[step]):
            raise UsageError(f"Alternative {i + 1} is the token itself; contrast it with another token.")


def _contrast_one(lm: nn.Module, model: LoadedModel, text: GeneratedText, alternative: int, step: int, method: str,
                  steps: int, baseline: str, engine: Engine, advance) -> ContrastAttribution:
    began = time.perf_counter()
    dev = device_of(lm)
    n = len(text.prompt_ids) + step
    context = torch.as_tensor(text.input_ids[:n], device=dev)  # [n]
    token = int(text.input_ids[n])
    pair = torch.tensor([token, alternative], device=dev)  # [2]: A, B
    dtype = lm.get_input_embeddings().weight.dtype
    with torch.no_grad():
        x = lm.get_input_embeddings()(context).float()  # [n, D]
        difference = float(_differences(lm, x[None].to(dtype), pair)[0])
    _check_difference(model, difference, alternative, step)  # before the grid: an infinite f has no attribution
    ig = method == "integrated_gradients"
    base = reference_embeddings(lm, model, x, baseline) if ig else torch.zeros_like(x)
    alphas, weights = (quadrature(steps) if ig else (torch.ones(1, dtype=torch.float64),) * 2)
    alphas, weights = alphas.to(dev, torch.float32), weights.to(dev, torch.float32)
    diff = x - base  # [n, D]
    acc = torch.zeros_like(x)  # [n, D] weighted gradient sum
    layers = int(getattr(lm.config, "num_hidden_layers", 0) or getattr(lm.config, "n_layer", 0) or 12)

    def work(lo: int, hi: int) -> None:
        k = torch.arange(lo, hi, device=dev)
        points = (base[None] + alphas[k].view(-1, 1, 1) * diff[None]).requires_grad_(True)  # [B, n, D]
        with torch.enable_grad():
            f = _differences(lm, points.to(dtype), pair)  # [B]
        (grads,) = torch.autograd.grad(f.sum(), points)  # [B, n, D]
        acc.add_((grads.float() * weights[k].view(-1, 1, 1)).sum(0))
        advance(hi - lo)

    engine.map_chunks(steps, work, n * x.shape[1] * 4 * (4 + 16 * layers), report=False)
    if ig:
        values = (acc * diff).sum(-1)  # [n]
    elif method == "saliency":
        values = acc.abs().sum(-1)  # |grad f|: the gradient of the difference
    else:
        values = (acc * x).sum(-1)
    with torch.no_grad():
        baseline_difference = float(_differences(lm, base[None].to(dtype), pair)[0]) if ig else float("nan")
    error = abs(float(values.double().sum()) - (difference - baseline_difference)) if ig else float("nan")
    params = {"steps": steps, "baseline": baseline} if ig else {}
    return ContrastAttribution(text.input_ids[:n], step, token, alternative, values.cpu().numpy(), difference,
                               baseline_difference, error, method, params, time.perf_counter() - began)


@in_model_process
def check_contrast(model: LoadedModel, contexts: Sequence[np.ndarray], alternative: int, step: int) -> None:
    """Refuse, before anything is attributed, an alternative whose log-probability after one of ``contexts``
    (int ids [n_i]: a prompt and the tokens before the contrasted step ``step``) is not finite. One forward pass
    per context.

    Raises:
        UsageError: which alternative, which step, in one line.
    """
    lm = causal_lm(model)
    with torch.no_grad():
        for context in contexts:
            ids = torch.as_tensor(np.asarray(context, np.int64), device=device_of(lm))[None]  # [1, n]
            logp = torch.log_softmax(lm(input_ids=ids, use_cache=False).logits[0, -1].float(), dim=-1)  # [V]
            _check_difference(model, -float(logp[int(alternative)]), alternative, step)  # f's sign as -log p(B)


def _check_difference(model: LoadedModel, difference: float, alternative: int, step: int) -> None:
    """Refuse a contrast whose f = log p(A) - log p(B) is not finite: B masked there (+inf), or NaN logits."""
    if np.isfinite(difference):
        return
    token = token_strings([alternative], model.spec)[0]
    why = ("-inf there: the model never gives it (a masked token)" if difference == float("inf")
           else "no finite value there: the model's logits are not finite")
    raise UsageError(f"The alternative {token!r} has log-probability {why}, so a contrast at step {step} has no "
                     "attribution.", "Contrast with another token.")


def alternative_tokens(texts: Sequence[str], spec, what: str = "Alternative") -> list[int]:
    """The one token id of each alternative text (encoded without special tokens, as a continuation is).

    Raises:
        UsageError: a text of no token or of several (`single_tokens`), or one the tokenizer reads as its unknown
            token (not in the model's vocabulary) when the text is not that token itself.
        IncompatibleInput: a text with no tokens (`explain.generation.prompts.encode_texts`).
    """
    ids = single_tokens(encode_texts(texts, spec, special_tokens=False), what)
    unknown = unknown_token(spec)
    for i, (text, token) in enumerate(zip(texts, ids)):
        if unknown is not None and token == unknown[0] and text.strip() != unknown[1]:
            raise UsageError(f"{_which(what, i, len(texts))} ({text!r}) is not in the model's vocabulary: its tokenizer reads it as "
                             f"the unknown token {unknown[1]!r}.", "Give a token of the model's vocabulary.")
    return ids


def _differences(lm: nn.Module, points: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """log p(pair[0]) - log p(pair[1]) after the last of ``points`` [B, n, D]: [B]."""
    keep = {"logits_to_keep": 1} if keeps_logits(lm) else {}
    logp = torch.log_softmax(lm(inputs_embeds=points, use_cache=False, **keep).logits[:, -1].float(), dim=-1)  # [B, V]
    return logp[:, pair[0]] - logp[:, pair[1]]


def single_tokens(token_lists: Sequence[np.ndarray], what: str = "Alternative") -> list[int]:
    """The one token id of each encoded alternative (a contrast compares one token with one token).

    Raises:
        UsageError: an alternative of no token or of several.
    """
    out = []
    for i, ids in enumerate(token_lists):
        if len(ids) != 1:
            raise UsageError(f"{_which(what, i, len(token_lists))} is {len(ids)} tokens; a contrast compares the token with one other token.",
                             "Give one token per line (the model's tokenizer decides what a token is).")
        out.append(int(ids[0]))
    return out


def _which(what: str, i: int, count: int) -> str:
    """``what`` alone for one alternative, else with its place (``Alternative 2``)."""
    return what if count == 1 else f"{what} {i + 1}"


def read_alternatives(path, spec) -> list[int]:
    """One alternative token id per line of a ``.txt`` (its leading spaces kept: ``" four"`` is GPT-2's
    ``Ġfour``), or per row of ``.npy`` / ``.npz`` ids [N, 1].

    Raises:
        UsageError: a missing file, or a line that is not one token. CorruptFile / IncompatibleInput: as
            `explain.generation.prompts.read_token_lists`.
    """
    from pathlib import Path

    from explain.generation.prompts import read_token_lists

    path = Path(path)
    if path.suffix.lower() in (".npy", ".npz") or not path.is_file():
        return single_tokens(read_token_lists(path, spec, special_tokens=False, what="alternatives"))
    lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8-sig", errors="replace").split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UsageError(f"{path.name} has no alternatives.", "Write one token per line.")
    return alternative_tokens(lines, spec)
