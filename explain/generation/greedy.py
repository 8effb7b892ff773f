"""Greedy generation with the KV cache: transformers' ``generate(do_sample=False)``, token by token.

Prompts of different lengths run together in batches (`BATCH_PROMPTS`): left-padded, with an
attention mask that hides the padding and position ids that start at each prompt's first token, so
each prompt's tokens equal those of the prompt generated alone. One forward pass over the batch fills
the cache, then one pass per new token reads it. A prompt stops after ``max_new_tokens`` or at an
end-of-sequence id (which is kept, as ``generate`` keeps it); its batch runs until all have stopped.
`decode_batched` is the loop; how the next token is picked (`pick_greedy`, or sampling,
`explain.generation.sampling`) is its argument. A model without a KV cache (a ``.pt2``,
`explain.generation.causal_lm.has_kv_cache`) runs each prompt alone, the whole sequence per new token.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from explain.errors import IncompatibleInput, UsageError
from explain.generation.causal_lm import causal_lm, check_lengths, device_of, eos_ids, has_kv_cache, special_ids
from explain.generation.result import GeneratedText
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress

#: The most tokens one generation may add.
MAX_NEW_TOKENS = 1024
#: Prompts generated together in one batch (left-padded).
BATCH_PROMPTS = 16
NOT_FINITE_HINT = "Check the model's weights (NaN), or run it in float32 (half precision overflows to inf)."

#: pick(logits [B, V] float32, rows [B]: each batch row's prompt index) -> token ids [B]
PickFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


def _cache_arg(lm: torch.nn.Module) -> str:
    """The forward's name of the KV cache: ``cache`` (transformers >= 5.x), else ``past_key_values``."""
    try:
        return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _takes_positions(lm: torch.nn.Module) -> bool:
    """Whether the forward takes ``position_ids`` (a model without it derives them from the mask, as OPT does)."""
    try:
        return "position_ids" in inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return False


def pick_greedy(logits: torch.Tensor, _rows: list[int]) -> torch.Tensor:
    """generate's greedy pick: the first maximum of each row of ``logits`` [B, V] -> [B]."""
    return torch.argmax(logits, dim=-1)


@in_model_process
def generate_greedy(model: LoadedModel, prompts: Sequence[np.ndarray], max_new_tokens: int = 20,
                    progress: ProgressFn | None = None, batch_size: int = BATCH_PROMPTS) -> list[GeneratedText]:
    """The greedy continuation of each prompt and the log-probability of each new token.

    Args:
        prompts: one int array [P_i] of token ids per prompt.
        max_new_tokens: at most this many tokens after each prompt (1 .. `MAX_NEW_TOKENS`).
        progress: progress(done, total) over prompts x new tokens.
        batch_size: prompts generated together (1: each alone).
    """
    return decode_batched(model, prompts, max_new_tokens, pick_greedy, progress, batch_size)


def decode_batched(model: LoadedModel, prompts: Sequence[np.ndarray], max_new_tokens: int, pick: PickFn,
                   progress: ProgressFn | None = None, batch_size: int = BATCH_PROMPTS) -> list[GeneratedText]:
    """Each prompt continued by ``pick`` with the KV cache, in left-padded batches of ``batch_size`` prompts.

    Raises:
        UsageError: max_new_tokens outside 1 .. `MAX_NEW_TOKENS`, a batch size below 1.
        UsageError / TooLarge: an empty prompt, or one too long for the model's positions.
    """
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise UsageError(f"max_new_tokens must be 1 .. {MAX_NEW_TOKENS}, not {max_new_tokens}.")
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}.")
    lm = causal_lm(model)
    check_lengths(lm, prompts, [int(max_new_tokens)] * len(prompts))
    batch_size = batch_size if has_kv_cache(lm) else 1  # no cache, no position ids: each prompt alone, unpadded
    pad = special_ids(lm, model)["pad"] or 0  # any id: masked out
    total, done, out = len(prompts) * int(max_new_tokens), [0], []

    def advance(rows: int) -> None:
        done[0] += rows
        report_progress(progress, done[0], total)

    with torch.no_grad():
        for lo in range(0, len(prompts), int(batch_size)):
            rows = list(range(lo, min(lo + int(batch_size), len(prompts))))
            out += _decode_batch(lm, [prompts[i] for i in rows], rows, int(max_new_tokens), pick, int(pad), advance)
    report_progress(progress, total, total)
    return out


def _check_finite(logits: torch.Tensor, running: torch.Tensor, step: int) -> None:
    """Refuse next-token logits [B, V] of a running row [B] with a NaN, a +inf or no finite value: its next token
    and log-probability are undefined (greedy would pick id 0 at log-probability NaN, sampling fail in torch).

    Raises:
        IncompatibleInput: in one line, with the new token's number.
    """
    bad = (logits.isnan().any(-1) | logits.isposinf().any(-1) | logits.isneginf().all(-1)) & running  # [B]
    if bool(bad.any()):
        raise IncompatibleInput(f"The model's logits for new token {step + 1} are not finite (NaN or inf), so no "
                                "next token is defined.", NOT_FINITE_HINT)


def _decode_batch(lm: torch.nn.Module, prompts: list[np.ndarray], rows: list[int], max_new: int, pick: PickFn,
                  pad: int, advance: Callable[[int], None]) -> list[GeneratedText]:
    device, cache_arg, takes_positions, cached = device_of(lm), _cache_arg(lm), _takes_positions(lm), has_kv_cache(lm)
    stop = torch.tensor(sorted(eos_ids(lm)), dtype=torch.long, device=device)
    b, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, longest), pad, dtype=torch.long, device=device)  # [B, L] left-padded
    mask = torch.zeros((b, longest), dtype=torch.long, device=device)  # [B, L] 1 at a prompt's tokens
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt):] = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)
        mask[i, longest - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]: 0 at each prompt's first token
    step, cache = ids, None
    tokens, logprobs = [], []  # per new token: [B] ids, [B] log-probabilities
    running = torch.ones(b, dtype=torch.bool, device=device)  # [B] not stopped yet
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # [B] tokens kept per prompt
    for _ in range(max_new):
        where = {"position_ids": positions} if takes_positions else {}
        if cached:
            res = lm(input_ids=step, attention_mask=mask, use_cache=True, **where, **{cache_arg: cache})
            cache = res["cache"] if "cache" in res else res.get("past_key_values")
        else:  # the whole sequence so far (no cache)
            res = lm(input_ids=step, attention_mask=mask, use_cache=False)
        last = res.logits[:, -1].float()  # [B, V]
        _check_finite(last, running, len(tokens))
        token = pick(last, rows).to(device)  # [B]
        tokens.append(token)
        logprobs.append(torch.log_softmax(last, dim=-1).gather(1, token[:, None])[:, 0])
        lengths += running.long()
        advance(int(running.sum()))
        running &= ~torch.isin(token, stop)
        if not running.any():
            break
        step = token[:, None] if cached else torch.cat([step, token[:, None]], 1)  # [B, 1] or [B, L + t + 1]
        mask = torch.cat([mask, mask.new_ones((b, 1))], 1)  # [B, L + t + 1]
        positions = positions[:, -1:] + 1  # [B, 1]
    kept = torch.stack(tokens, 1).cpu().numpy(), torch.stack(logprobs, 1).cpu().numpy()  # [B, T] each
    return [GeneratedText(np.asarray(prompt), kept[0][i, : lengths[i]], kept[1][i, : lengths[i]])
            for i, prompt in enumerate(prompts)]
