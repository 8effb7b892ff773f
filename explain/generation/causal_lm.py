"""The transformers causal LM inside a `LoadedModel`, and what the other modules ask of it.

A Hugging Face folder whose ``config.json`` names a ``*ForCausalLM`` (or GPT-2's
``GPT2LMHeadModel``) loads as a text model with ``spec.task == "causal_lm"``; its
module (`explain.loading.huggingface.HFClassifier`) holds the transformers model as
``.model``. A ``.pt2`` of token ids -> logits at every position loads the same way, its
``.model`` an `explain.loading.export_lm.ExportedCausalLM` that answers as transformers'
model does (logits, input embeddings, config), without a KV cache (`has_kv_cache`). Functions here touch the graph, so they are called only from functions
that run in the model's process (`explain.loading.model_process.in_model_process`),
except `require_causal_lm` and `hidden_states_out_of_reach`, which read the spec and format only.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput, TooLarge, UsageError, one_line
from explain.generation.result import GenerationAttribution
from explain.inputs.text import PAD_TOKENS, UNK_TOKENS, spec_vocabulary
from explain.loading.export_lm import NO_HIDDEN_STATES, NO_HIDDEN_STATES_HINT, ExportedCausalLM
from explain.model import LoadedModel

#: Where decoders keep their final norm (Llama, Mistral, Qwen, Gemma: ``norm``; GPT-2: ``ln_f``;
#: OPT, GPT-NeoX: ``final_layer_norm``; Phi: ``final_layernorm``).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")
CAUSAL_HINT = "Load a Hugging Face folder (or zip) whose config.json names a *ForCausalLM."
#: Half-precision weights: gradient methods integrated in them miss completeness (a tiny bf16 Llama: 0.02 nats
#: at 32 IG steps, against 1e-4 for its float32 copy; a 1B model's errors reach ~1 nat).
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: The float32 copy of each half-precision model gradient methods run on (`attribution_lm`), in its process.
_FLOAT32_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def require_causal_lm(model: LoadedModel, what: str = "This") -> None:
    """Raise `IncompatibleInput` unless ``model`` is a causal language model (its spec says so)."""
    if not model.spec.is_causal_lm:
        raise IncompatibleInput(f"{what} explains causal language models; {model.name} is a "
                                f"{model.spec.modality} classifier.", CAUSAL_HINT)


def hidden_states_out_of_reach(model: LoadedModel) -> str | None:
    """The one line saying why ``model``'s hidden states and attention maps (the logit lens, the attention
    views) cannot be read — a ``.pt2`` causal LM gives its logits only — else None. Any process: no graph read."""
    if model.spec.is_causal_lm and model.format == "export":
        return one_line(IncompatibleInput(NO_HIDDEN_STATES, NO_HIDDEN_STATES_HINT))
    return None


def causal_lm(model: LoadedModel) -> nn.Module:
    """The transformers ``*ForCausalLM`` of ``model`` (in this process: the model's own).

    Raises:
        IncompatibleInput: not a causal LM, or not one built from a Hugging Face folder.
    """
    require_causal_lm(model)
    inner = getattr(model.module, "model", None)
    if not isinstance(inner, nn.Module) or not callable(getattr(inner, "get_input_embeddings", None)):
        raise IncompatibleInput(f"{model.name} is a causal LM Glassbox cannot reach the layers of.", CAUSAL_HINT)
    if isinstance(inner, ExportedCausalLM):  # a .pt2: its end-of-sequence id is its tokenizer's (the spec's)
        inner.bind_vocabulary(model.spec)
    return inner


def is_exported(lm: nn.Module) -> bool:
    """True for a ``.pt2`` causal LM (`explain.loading.export_lm.ExportedCausalLM`): a program, not transformers' model."""
    return isinstance(lm, ExportedCausalLM)


def has_kv_cache(lm: nn.Module) -> bool:
    """False for a ``.pt2`` causal LM: each new token runs the whole sequence."""
    return not is_exported(lm)


def device_of(lm: nn.Module) -> torch.device:
    return next(lm.parameters()).device


def eos_ids(lm: nn.Module) -> set[int]:
    """The ids that end a generation: the generation config's ``eos_token_id`` (else the model config's)."""
    found: Any = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    if found is None:
        found = getattr(lm.config, "eos_token_id", None)
    values = found if isinstance(found, (list, tuple)) else [found]
    return {int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)}


def special_ids(lm: nn.Module, model: LoadedModel) -> dict[str, int | None]:
    """The ``pad`` and ``unk`` ids of the reference embeddings.

    ``pad``: the config's ``pad_token_id``, else the tokenizer's padding token (`PAD_TOKENS`), else
    the end-of-sequence id (what GPT-2 and Llama pad with). ``unk``: the tokenizer's unknown token
    (`UNK_TOKENS`), else None.
    """
    vocab = list(spec_vocabulary(model.spec) or [])
    index = {token: i for i, token in enumerate(vocab)}
    pad = getattr(lm.config, "pad_token_id", None)
    if not isinstance(pad, int) or isinstance(pad, bool):
        pad = next((index[t] for t in PAD_TOKENS if t in index), None)
    if pad is None:
        pad = min(eos_ids(lm), default=None)
    unk = next((index[t] for t in UNK_TOKENS if t in index), None)
    return {"pad": pad, "unk": unk}


def final_norm(lm: nn.Module) -> nn.Module:
    """The norm the last hidden state goes through before the LM head.

    Raises:
        IncompatibleInput: a decoder that keeps it under another name.
    """
    if is_exported(lm):
        raise IncompatibleInput(NO_HIDDEN_STATES, NO_HIDDEN_STATES_HINT)
    decoder = lm.get_decoder() if callable(getattr(lm, "get_decoder", None)) else None
    for owner in (decoder, getattr(lm, "base_model", None), lm):
        for name in FINAL_NORM_NAMES:
            found = getattr(owner, name, None) if owner is not None else None
            if isinstance(found, nn.Module):
                return found
    raise IncompatibleInput(f"{type(lm).__name__} keeps its final norm under a name Glassbox does not know.")


def head_logits(lm: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] of final-normed hidden states [..., D]: the LM head, then the config's
    soft-capping (Gemma 2) where it has one."""
    logits = lm.get_output_embeddings()(normed)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if isinstance(cap, (int, float)) and cap > 0:
        logits = torch.tanh(logits / cap) * cap
    return logits


def max_positions(lm: nn.Module) -> int | None:
    """The longest sequence the model's positions allow (None: no limit in its config)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(lm.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(lm: nn.Module, prompts: Sequence[np.ndarray], new_tokens: Sequence[int]) -> None:
    """Refuse an empty prompt, or a prompt plus its new tokens longer than the model's positions."""
    limit = max_positions(lm)
    for i, (prompt, new) in enumerate(zip(prompts, new_tokens)):
        if len(prompt) == 0:
            raise UsageError(f"Prompt {i + 1} has no tokens.")
        if limit and len(prompt) + new > limit:
            more = f"; with {new} more it exceeds" if new else ", over"
            raise TooLarge(f"Prompt {i + 1} has {len(prompt)} tokens{more} the model's {limit} positions.",
                           "Use a shorter prompt" + (" or fewer new tokens." if new else "."))


def target_logprob_grid(lm: nn.Module, points: torch.Tensor, positions: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[j] | points[b, :positions[j] + 1]) for every point b and target j: [B, K].

    points [B, L, D] input embeddings (B points of one text: IG's steps), positions [K] distinct
    positions (where each target is predicted from), targets [K] ids. One forward pass; the
    head runs only at ``positions`` when the model takes ``logits_to_keep``.
    """
    kwargs = {"logits_to_keep": positions} if keeps_logits(lm) else {}
    logits = lm(inputs_embeds=points, use_cache=False, **kwargs).logits  # [B, K or L, V]
    rows = logits if kwargs else logits[:, positions]  # [B, K, V]
    index = targets.view(1, -1, 1).expand(points.shape[0], -1, 1)  # [B, K, 1]
    return torch.log_softmax(rows.float(), dim=-1).gather(2, index)[..., 0]


def keeps_logits(lm: nn.Module) -> bool:
    """True when the model's forward takes ``logits_to_keep`` (the head runs only where asked)."""
    try:
        return "logits_to_keep" in inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return False


def weights_dtype(lm: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (the first)."""
    return next((p.dtype for p in lm.parameters() if p.is_floating_point()), torch.float32)


def attribution_lm(lm: nn.Module, device: torch.device | str) -> nn.Module:
    """The model the gradient and rule methods run on: on the CPU, a float32 copy of a half-precision
    transformers model (made once per model, in its process), so their values add up exactly; else ``lm``
    (a GPU keeps the model's half precision, as does a ``.pt2``, whose program casts to its own dtypes, and a
    model whose float32 copy does not fit in memory; `record_precision` says so)."""
    if weights_dtype(lm) not in HALF_DTYPES or torch.device(device).type != "cpu" or not has_kv_cache(lm):
        return lm
    found = _FLOAT32_COPIES.get(lm)
    if found is None:
        try:
            found = _FLOAT32_COPIES[lm] = copy.deepcopy(lm).float().eval()
        except (MemoryError, RuntimeError) as exc:  # no room for twice the weights: half precision, stated
            if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
                raise
            return lm
    return found


def precision_params(lm: nn.Module, used: nn.Module) -> dict[str, str]:
    """``{"dtype": what ran, "weights_dtype": the model's}`` for a half-precision model (`attribution_lm`), else {}."""
    weights = weights_dtype(lm)
    if weights not in HALF_DTYPES:
        return {}
    return {"dtype": str(weights_dtype(used)).removeprefix("torch."), "weights_dtype": str(weights).removeprefix("torch.")}


def record_precision(result: GenerationAttribution, lm: nn.Module, used: nn.Module) -> GenerationAttribution:
    """``result`` with the dtype it was computed in when the model's weights are half precision:
    ``params["dtype"]`` (what ran) and ``params["weights_dtype"]``, and a note; when it ran in half precision
    and a completeness error is over the tolerance, the note is the warning (`half_precision_warning`)."""
    params = precision_params(lm, used)
    if not params:
        return result
    ran, name = params["dtype"], params["weights_dtype"]
    recorded = dataclasses.replace(result, params={**result.params, **params})
    warning = half_precision_warning(recorded)
    note = warning or (f"Computed in float32 on a copy of the model's {name} weights (exact sums)." if ran == "float32"
                       else f"Computed in the model's {name}.")
    return dataclasses.replace(recorded, notes=[*result.notes, note])


def half_precision_warning(result: GenerationAttribution, tolerance: float = 0.01) -> str | None:
    """One line when ``result`` ran in half precision (``params["dtype"]``) and a completeness error is above
    its tolerance (``params["tolerance"]``, else ``tolerance``); None otherwise."""
    ran = result.params.get("dtype")
    errors = np.asarray(result.completeness_error, dtype=np.float64)
    errors = errors[np.isfinite(errors)]
    limit = float(result.params.get("tolerance") or tolerance)
    if ran not in ("bfloat16", "float16") or not errors.size or float(errors.max()) <= limit:
        return None
    return (f"Completeness errors up to {float(errors.max()):.2g} nats, over the {limit:g} tolerance, come from "
            f"half precision: this ran in the model's {ran}; on the CPU Glassbox integrates a float32 copy instead.")
