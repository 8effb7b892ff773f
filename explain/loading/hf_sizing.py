"""Sizing a Hugging Face upload before anything is built (`explain.loading.huggingface` reads it).

The weights are counted from their headers, never read whole in the server (`weight_shapes`), and
``config.json`` is sized against them and the operator's caps: first by an estimated parameter count from
the raw JSON (`estimate_parameters`, `check_config_size`), then by the exact count of the model built on the
``meta`` device (`check_exact_size`, no tensor memory).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from explain import config as gb_config
from explain.errors import CorruptFile, TooLarge
from explain.jsonable import count_values
from explain.loading.source import Archive, weights_only_shapes

HF_HINT = ("Upload a Hugging Face folder (or its .zip) with config.json and model.safetensors "
           "for sequence or image classification.")
#: Most JSON values a config.json may hold besides its labels (a real one: a few hundred; Whisper's ~300).
MAX_CONFIG_VALUES = 20_000


def weight_shapes(archive: Archive, weights: dict[str, str]) -> tuple[dict[str, tuple[int, ...]], int]:
    """Each weight's shape and the values the weights hold, their data never read: a safetensors file's (or
    shard's) from its header alone (`safetensors_shapes`, each tensor's dtype and offsets checked against the
    member's declared size, no two tensors over the same bytes), a ``.bin``'s from its pickle, unpickled
    weights-only with every storage on the ``meta`` device and checked against its zip record's declared size
    (`weights_only_shapes`: each storage counted once, so tied weights count once; a stored member is read in
    place, where the pickle and the zip directory are). Each member is vetted as a whole read would be
    (`Archive.vet`).

    Returns:
        (each weight's shape, the values held).

    Raises:
        CorruptFile: no weights, or a header / pickle not backed by the bytes it declares.
        UnsafeFile: a ``.bin`` pickle beyond tensors.
    """
    from explain.loading.weights import safetensors_header_bytes, safetensors_shapes

    if not weights:
        raise CorruptFile("The Hugging Face model has no model.safetensors or pytorch_model.bin.", HF_HINT)
    shapes: dict[str, tuple[int, ...]] = {}
    values = 0
    for name, member in weights.items():
        archive.vet(member)
        if name == "pytorch_model.bin":
            with archive.window(member) as file:
                found, held = weights_only_shapes(file, name)
            shapes.update(found)
            values += held
            continue
        head = archive.head(member, safetensors_header_bytes(archive.head(member, 8)))
        try:
            found = safetensors_shapes(head, archive.sizes[member])
        except CorruptFile as exc:
            raise CorruptFile(f"{name} is damaged ({exc.reason})", exc.hint) from None
        shapes.update(found)
        values += sum(math.prod(shape) for shape in found.values())  # each byte is one tensor's
    return shapes, values


# --------------------------------------------------------------------------
# sizing a config before anything is built
# --------------------------------------------------------------------------
#: config.json keys, in the order read, for each size `estimate_parameters` uses.
_WIDTH_KEYS = ("hidden_size", "d_model", "dim", "n_embd", "embed_dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer", "encoder_layers")
_LABEL_KEYS = ("id2label", "label2id")
_FFN_KEYS = ("intermediate_size", "ffn_dim", "encoder_ffn_dim", "n_inner")


def _size(cfg: dict, keys: tuple[str, ...], default: int = 0) -> int:
    """The first of ``keys`` that ``cfg`` sets to a whole number (lists: their largest, ``depths``: summed)."""
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        if min(values) < 0:
            raise CorruptFile(f"config.json sets {key} to a negative size ({min(values)}).", HF_HINT)
        return sum(values) if key == "depths" else max(values)
    return default


def estimate_parameters(cfg: dict) -> tuple[int, int, int]:
    """A lower bound of the parameters ``cfg`` builds, its layers and its labels, from the raw JSON.

    Counted, for any model type: the token embeddings (vocabulary x embedding
    width), per layer at least one width x width projection and half a
    width x feed-forward one (shared layers counted once: ALBERT's groups; none
    for CNNs, whose widths vary per stage), the patch embedding of a patch
    model and the classifier (labels x width). Every
    built-in classification model has at least that many, so a config asking
    for more than its weights hold is refused without a false alarm.

    Returns:
        (parameters, layers, labels).

    Raises:
        CorruptFile: a negative size.
    """
    scalar = _size(cfg, _WIDTH_KEYS)  # a transformer's width; CNNs list theirs (hidden_sizes) per stage
    width = scalar or _size(cfg, ("hidden_sizes",))
    embedding = _size(cfg, ("embedding_size",), width)
    layers = _size(cfg, _LAYER_KEYS) or _size(cfg, ("depths",))
    own_layers = min(layers, _size(cfg, ("num_hidden_groups",), layers)) if scalar else 0
    ffn = _size(cfg, _FFN_KEYS) or (_size(cfg, ("hidden_dim",)) if "dim" in cfg else 0)
    labels = max((_size(cfg, ("num_labels",)), *(len(cfg[k]) for k in _LABEL_KEYS if isinstance(cfg.get(k), dict))))
    patch = _size(cfg, ("patch_size",))
    channels = _size(cfg, ("num_channels",), 3)
    parameters = (_size(cfg, ("vocab_size",)) * embedding + own_layers * (width * width + width * ffn // 2)
                  + channels * patch * patch * width + labels * width)
    return parameters, layers, labels


def check_config_size(cfg: dict, available: int) -> None:
    """Refuse a ``config.json`` over the operator's caps or asking for more than its weights hold.

    Raises:
        TooLarge: more labels, layers, parameters or image pixels than the caps allow.
        CorruptFile: more parameters than the weights hold (``available`` values).
    """
    parameters, layers, labels = estimate_parameters(cfg)
    caps = (("labels", labels, gb_config.max_labels(), "GLASSBOX_MAX_LABELS"),
            ("layers", layers, gb_config.max_layers(), "GLASSBOX_MAX_LAYERS"),
            ("parameters", parameters, gb_config.max_parameters(), "GLASSBOX_MAX_PARAMETERS"))
    for what, count, cap, setting in caps:
        if count > cap:
            raise TooLarge(f"config.json asks for {count:,} {what}, over the {cap:,} limit.",
                           f"An operator can raise it with {setting}.")
    values = count_values(cfg) - sum(len(cfg[k]) for k in _LABEL_KEYS if isinstance(cfg.get(k), dict))
    if values > MAX_CONFIG_VALUES:  # transformers deep-copies and JSON-encodes each (~0.6 KB, ~40 us apiece)
        raise TooLarge(f"config.json holds {values:,} values besides its labels, over the {MAX_CONFIG_VALUES:,} "
                       "Glassbox reads.", "Upload the config.json that transformers wrote for the model.")
    side = _size(cfg, ("image_size",))
    if side * side > gb_config.max_image_pixels():
        raise TooLarge(f"config.json asks for {side}x{side} images, over the "
                       f"{gb_config.max_image_pixels():,} pixel limit.")
    if parameters > available:
        raise CorruptFile(f"config.json asks for at least {parameters:,} parameters, but the weights hold "
                          f"{available:,} values.", "Upload the config.json that belongs with these weights.")


def check_exact_size(model_class: Any, config: Any, available: int) -> None:
    """Build the model on the ``meta`` device (no tensor memory) and refuse more parameters than the weights hold.

    This counts what `estimate_parameters` cannot see (any other size in the config); a model class that
    cannot be built on ``meta`` is left to ``from_pretrained`` (which builds on ``meta`` too).
    """
    try:
        with torch.device("meta"):
            model = model_class(config)
    except Exception:
        return
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > gb_config.max_parameters():
        raise TooLarge(f"config.json builds {parameters:,} parameters, over the {gb_config.max_parameters():,} limit.",
                       "An operator can raise it with GLASSBOX_MAX_PARAMETERS.")
    if parameters > available:
        raise CorruptFile(f"config.json builds {parameters:,} parameters, but the weights hold {available:,} values.",
                          "Upload the config.json that belongs with these weights.")
