"""A given continuation scored by teacher forcing: the model's log-probability of each of its
tokens given the prompt and the tokens before it (one forward pass per prompt, no cache). A token whose
log-probability is not finite (-inf: masked; NaN) is refused in one line: its attributions would be NaN."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explain.errors import UsageError
from explain.generation.causal_lm import causal_lm, check_lengths, device_of
from explain.generation.prompts import token_strings
from explain.generation.result import GeneratedText
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel


@in_model_process
def force_continuations(model: LoadedModel, prompts: Sequence[np.ndarray],
                        continuations: Sequence[np.ndarray]) -> list[GeneratedText]:
    """Each prompt followed by its given continuation, with the continuation's log-probabilities.

    Args:
        prompts: int arrays [P_i] of token ids.
        continuations: int arrays [T_i] of token ids, one per prompt (at least one token each).
    """
    if len(prompts) != len(continuations):
        raise UsageError(f"{len(continuations)} continuations for {len(prompts)} prompts; give one per prompt.")
    for i, cont in enumerate(continuations):
        if len(cont) == 0:
            raise UsageError(f"Continuation {i + 1} has no tokens.")
    lm = causal_lm(model)
    check_lengths(lm, prompts, [len(c) for c in continuations])
    out = []
    with torch.no_grad():
        for i, (prompt, cont) in enumerate(zip(prompts, continuations)):
            seq = np.concatenate([np.asarray(prompt, np.int64), np.asarray(cont, np.int64)])  # [P + T]
            p = len(prompt)
            ids = torch.as_tensor(seq[:-1], device=device_of(lm))[None]  # [1, P + T - 1]
            logits = lm(input_ids=ids, use_cache=False).logits[0, p - 1:]  # [T, V]: position p - 1 + i predicts token p + i
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(1, torch.as_tensor(seq[p:], device=logp.device)[:, None])[:, 0]  # [T]
            scores = picked.cpu().numpy()
            _check_scores(model, scores, seq[p:], i)
            out.append(GeneratedText(seq[:p], seq[p:], scores, forced=True))
    return out


def _check_scores(model: LoadedModel, scores: np.ndarray, cont: np.ndarray, i: int) -> None:
    """Refuse continuation ``i`` in one line when a token's log-probability ``scores`` [T] is not finite: -inf (a
    token the model masks there) or NaN (non-finite logits); its attributions would be NaN."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if not bad.size:
        return
    j = int(bad[0])
    token = token_strings([cont[j]], model.spec)[0]
    why = ("-inf: the model never gives it there (a masked token)" if np.isneginf(scores[j])
           else "NaN: the model's logits there are not finite")
    raise UsageError(f"Token {j + 1} of continuation {i + 1} ({token!r}) has log-probability {why}, so it has no "
                     "attribution.", "Give a continuation without that token, or let the model generate the tokens.")
