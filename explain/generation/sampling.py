"""Sampled generation with a seed: transformers' ``generate(do_sample=True)`` warpers, reproducibly.

At each step the last position's logits (float32) go through transformers' warpers in its order:
temperature (divided by T), top-k (every logit below the k-th largest removed), top-p (the smallest
tokens whose cumulative probability stays at or under 1 - p removed, the most likely always kept); the
next token is drawn by ``torch.multinomial`` from the softmax of what is left. Prompt i draws from its
own generator seeded ``seed + i``, so a prompt's tokens do not depend on the prompts batched beside it,
the same seed gives the same tokens, and prompt 0 with seed S draws what ``torch.manual_seed(S)`` then
``generate(do_sample=True, ...)`` draws. Temperature 0 is greedy generation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import numpy as np
import torch

from explain.errors import UsageError
from explain.generation.greedy import BATCH_PROMPTS, decode_batched, pick_greedy
from explain.generation.result import GeneratedText
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.progress import ProgressFn

MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn. temperature: 0 is greedy; top_k: 0 keeps every token; top_p: 1 keeps every token."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("temperature", Real), ("top_k", Integral), ("top_p", Real), ("seed", Integral)):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), kind):
                raise UsageError(f"{name} must be {'an integer' if kind is Integral else 'a number'}, "
                                 f"not {getattr(self, name)!r:.40}.")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise UsageError(f"temperature must be 0 .. {MAX_TEMPERATURE:g}, not {self.temperature}.")
        if int(self.top_k) < 0:
            raise UsageError(f"top_k must be 0 (off) or more, not {self.top_k}.")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1], not {self.top_p}.")
        if not 0 <= int(self.seed) < 2 ** 63 - 2 ** 20:
            raise UsageError(f"seed must be a non-negative integer, not {self.seed}.")

    def to_dict(self) -> dict:
        return asdict(self)


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``logits`` [B, V] after temperature, top-k and top-p (transformers' warpers): removed ones are -inf."""
    scores = logits / sampling.temperature if sampling.temperature != 1.0 else logits
    if sampling.top_k:
        kth = torch.topk(scores, min(int(sampling.top_k), scores.shape[-1]))[0][..., -1:]  # [B, 1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)  # [B, V] ascending
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
        drop[..., -1:] = False  # the most likely token stays
        scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return scores


def sampler(sampling: Sampling):
    """The pick function of `decode_batched`: prompt i draws with its own generator seeded ``seed + i``."""
    if sampling.temperature == 0:
        return pick_greedy
    generators: dict[int, torch.Generator] = {}

    def pick(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        probs = torch.softmax(filter_logits(logits, sampling), dim=-1)  # [B, V]
        out = []
        for b, row in enumerate(rows):
            if row not in generators:
                generators[row] = torch.Generator(device=logits.device).manual_seed(int(sampling.seed) + row)
            out.append(torch.multinomial(probs[b:b + 1], 1, generator=generators[row])[0, 0])
        return torch.stack(out)

    return pick


@in_model_process
def generate_sampled(model: LoadedModel, prompts: Sequence[np.ndarray], max_new_tokens: int = 20,
                     sampling: Sampling | None = None, progress: ProgressFn | None = None,
                     batch_size: int = BATCH_PROMPTS) -> list[GeneratedText]:
    """Each prompt's continuation drawn with ``sampling`` (default: temperature 1, seed 0), with the
    log-probability of each drawn token under the model's own (unfiltered) distribution."""
    return decode_batched(model, prompts, max_new_tokens, sampler(sampling or Sampling()), progress, batch_size)
