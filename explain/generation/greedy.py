"""Greedy generation with the KV cache: transformers' ``generate(do_sample=False)``, token by token.

Each prompt runs alone (no padding, so nothing about positions or masks can differ
from the model run on that prompt): one forward pass over the prompt fills the cache,
then one pass per new token reads it. Generation stops after ``max_new_tokens`` or
at an end-of-sequence id (which is kept, as ``generate`` keeps it).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch

from explain.errors import UsageError
from explain.generation.causal_lm import causal_lm, check_lengths, device_of, eos_ids
from explain.generation.result import GeneratedText
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress

#: The most tokens one generation may add.
MAX_NEW_TOKENS = 1024


def _cache_arg(lm: torch.nn.Module) -> str:
    """The forward's name of the KV cache: ``cache`` (transformers >= 5.x), else ``past_key_values``."""
    try:
        return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


@in_model_process
def generate_greedy(model: LoadedModel, prompts: Sequence[np.ndarray], max_new_tokens: int = 20,
                    progress: ProgressFn | None = None) -> list[GeneratedText]:
    """The greedy continuation of each prompt and the log-probability of each new token.

    Args:
        prompts: one int array [P_i] of token ids per prompt.
        max_new_tokens: at most this many tokens after each prompt (1 .. `MAX_NEW_TOKENS`).
        progress: progress(done, total) over prompts x new tokens.
    """
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise UsageError(f"max_new_tokens must be 1 .. {MAX_NEW_TOKENS}, not {max_new_tokens}.")
    lm = causal_lm(model)
    check_lengths(lm, prompts, [int(max_new_tokens)] * len(prompts))
    stop, device, cache_arg = eos_ids(lm), device_of(lm), _cache_arg(lm)
    total, out = len(prompts) * int(max_new_tokens), []
    with torch.no_grad():
        for n, prompt in enumerate(prompts):
            step = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)[None]  # [1, P]
            cache, tokens, logprobs = None, [], []
            for t in range(int(max_new_tokens)):
                res = lm(input_ids=step, use_cache=True, **{cache_arg: cache})
                cache = res["cache"] if "cache" in res else res.get("past_key_values")
                logp = torch.log_softmax(res.logits[0, -1].float(), dim=-1)  # [V]
                token = int(torch.argmax(res.logits[0, -1]))  # generate's greedy pick: the first maximum
                tokens.append(token)
                logprobs.append(float(logp[token]))
                report_progress(progress, n * int(max_new_tokens) + t + 1, total)
                if token in stop:
                    break
                step = torch.tensor([[token]], device=device)  # [1, 1]
            out.append(GeneratedText(np.asarray(prompt), np.asarray(tokens, dtype=np.int64), np.asarray(logprobs)))
    report_progress(progress, total, total)
    return out
