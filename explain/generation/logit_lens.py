"""The logit lens: what each layer would predict next, read through the final norm and the LM head.

For a prompt of L tokens the model's hidden states are taken before every layer and
before its final norm: index 0 is the embeddings, index ``layers`` is the input of the
final norm, whose lens (norm, head, soft-capping) is the model's own prediction. The
last hidden state comes from a forward hook on the final norm (transformers' own
``hidden_states[-1]`` is already normed), removed when the pass ends.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from explain.errors import UsageError
from explain.generation.causal_lm import causal_lm, check_lengths, device_of, final_norm, head_logits
from explain.generation.result import LogitLens
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress

#: The most tokens a lens lists per layer and position.
MAX_TOP_K = 100


@contextlib.contextmanager
def norm_input(norm: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives the input [N, L, D] of each call of ``norm``; the hook is removed on exit."""
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


@in_model_process
def logit_lens(model: LoadedModel, prompts: Sequence[np.ndarray], top_k: int = 5,
               progress: ProgressFn | None = None) -> LogitLens:
    """The top-k next tokens and their probabilities per layer and position of each prompt.

    Returns:
        `LogitLens` with ``top_ids`` / ``top_probs`` [N, layers + 1, L, k] (L: the longest prompt).
    """
    if not 1 <= int(top_k) <= MAX_TOP_K:
        raise UsageError(f"top_k must be 1 .. {MAX_TOP_K}, not {top_k}.")
    lm = causal_lm(model)
    check_lengths(lm, prompts, [0] * len(prompts))
    norm, device = final_norm(lm), device_of(lm)
    longest = max(len(p) for p in prompts)
    per_prompt, notes, worst = [], [], 0.0
    with torch.no_grad():
        for n, prompt in enumerate(prompts):
            ids = torch.as_tensor(np.asarray(prompt, np.int64), device=device)[None]  # [1, L]
            with norm_input(norm) as seen:
                out = lm(input_ids=ids, use_cache=False, output_hidden_states=True)
            if not seen:
                raise UsageError(f"{type(lm).__name__} never called its final norm; the lens cannot be read.")
            states = [*out.hidden_states[:-1], seen[-1]]  # layers + 1 of [1, L, D]
            tops, top_p = [], []
            for h in states:  # one layer's logits [L, V] at a time, not [layers + 1, L, V]: a 128k vocabulary
                logits = head_logits(lm, norm(h))[0].float()
                probs, top = torch.softmax(logits, dim=-1).topk(int(top_k), dim=-1)  # [L, k]
                tops.append(top)
                top_p.append(probs)
            worst = max(worst, float((logits - out.logits[0].float()).abs().max()))  # the last layer's
            per_prompt.append((torch.stack(tops).cpu().numpy(), torch.stack(top_p).cpu().numpy()))  # [layers + 1, L, k]
            report_progress(progress, n + 1, len(prompts))
    layers = per_prompt[0][0].shape[0]
    top_ids = np.full((len(prompts), layers, longest, int(top_k)), -1, dtype=np.int64)
    top_probs = np.zeros((len(prompts), layers, longest, int(top_k)), dtype=np.float32)
    for n, (ids, probs) in enumerate(per_prompt):
        top_ids[n, :, : ids.shape[1]] = ids
        top_probs[n, :, : ids.shape[1]] = probs
    if worst > 1e-3:
        notes.append(f"The lens's last layer differs from the model's logits by up to {worst:.3g}: "
                     "this model changes its logits after the head in a way the lens does not copy.")
    return LogitLens(top_ids, top_probs, np.asarray([len(p) for p in prompts]), notes)
