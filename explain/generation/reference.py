"""The reference a causal LM's attributions compare with: embeddings at every earlier position.

``pad``: the pad token's embedding (the config's ``pad_token_id``, else the tokenizer's
padding token, else end-of-sequence, `explain.generation.causal_lm.special_ids`), so
integrated gradients equal Captum's ``LLMGradientAttribution(LayerIntegratedGradients(model,
model.get_input_embeddings()))`` with ``baselines=pad_id``; ``unk``: the unknown token's;
``zero``: the zero vector.
"""
from __future__ import annotations

import torch
from torch import nn

from explain.errors import IncompatibleInput, UsageError
from explain.generation.causal_lm import special_ids
from explain.model import LoadedModel

#: The reference embeddings an attribution may compare with.
BASELINES = ("pad", "unk", "zero")


def reference_embeddings(lm: nn.Module, model: LoadedModel, embeddings: torch.Tensor, baseline: str) -> torch.Tensor:
    """The reference of ``embeddings`` [L, D]: [L, D], one vector at every position.

    Raises:
        UsageError: an unknown ``baseline``.
        IncompatibleInput: ``unk`` (or ``pad``) for a model whose tokenizer has no such token.
    """
    if baseline not in BASELINES:
        raise UsageError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if baseline == "zero":
        return torch.zeros_like(embeddings)
    token = special_ids(lm, model)[baseline]
    if token is None:
        raise IncompatibleInput(f"This model's tokenizer has no {baseline} token.", "Use --baseline pad or zero.")
    with torch.no_grad():
        ids = torch.full(embeddings.shape[:1], int(token), dtype=torch.long, device=embeddings.device)  # [L]
        return lm.get_input_embeddings()(ids).to(embeddings.dtype)
