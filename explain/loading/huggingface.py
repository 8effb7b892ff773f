"""Hugging Face model folders (or their ``.zip``): sequence and image classification.

A folder holds ``config.json`` and ``model.safetensors`` (or a weights-only
``pytorch_model.bin``), and for text a ``tokenizer.json`` or ``vocab.txt``, for
images maybe a ``preprocessor_config.json``. The model is built with
``transformers`` from the config class of its ``model_type`` (never remote code:
a config asking for it is refused), the weights are loaded strictly, and the
module is wrapped so it maps token ids [N, L] or pixels [N, C, H, W] to logits
[N, K]. Attention runs eagerly so it can be returned (`HFClassifier.attention_maps`).

A folder is read file by file with the capped reader and packed into an
in-memory zip (`folder_as_zip`), so a folder and its zip load the same way.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explain import config as gb_config
from explain.errors import CorruptFile, IncompatibleInput, UnsafeFile
from explain.loading.source import (
    LoadedParts,
    find_member,
    first_line,
    open_zip,
    read_folder,
    read_source,
    read_zip_member,
    weights_only_load,
)
from explain.spec import InputSpec

FORMAT = "huggingface"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: A sharded checkpoint: this index names its ``.safetensors`` shards (``weight_map``).
SHARD_INDEX = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"^[\w.-]{1,200}\.safetensors$")
MAX_SHARDS = 256
#: The files of a folder Glassbox reads; everything else is left alone.
KNOWN_FILES = ("config.json", *WEIGHT_FILES, SHARD_INDEX, "tokenizer.json", "vocab.txt", "tokenizer_config.json",
               "preprocessor_config.json", "special_tokens_map.json")
#: The longest text a text model's spec takes (tokens).
MAX_TEXT_LENGTH = 128
HF_HINT = ("Upload a Hugging Face folder (or its .zip) with config.json and model.safetensors "
           "for sequence or image classification.")


def is_hf_archive(names: list[str]) -> bool:
    """True when a zip's members are a Hugging Face model (config.json and weights)."""
    return find_member(names, "config.json") is not None and any(
        find_member(names, w) for w in (*WEIGHT_FILES, SHARD_INDEX))


def shard_names(index_json: bytes) -> list[str]:
    """The shard files a ``model.safetensors.index.json`` names (plain file names only).

    Raises:
        CorruptFile: not an index, a shard name with a path in it, or more than `MAX_SHARDS` shards.
    """
    try:
        weight_map = json.loads(index_json).get("weight_map")
    except (ValueError, UnicodeDecodeError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFile(f"{SHARD_INDEX} has no weight_map.", HF_HINT)
    names = sorted({str(v) for v in weight_map.values()})
    bad = [n for n in names if not _SHARD_NAME.match(n)]
    if bad:
        raise CorruptFile(f"{SHARD_INDEX} names a shard that is not a plain .safetensors file name: {bad[0][:80]!r}.")
    if len(names) > MAX_SHARDS:
        raise CorruptFile(f"{SHARD_INDEX} names {len(names)} shards; at most {MAX_SHARDS} are read.")
    return names


def folder_as_zip(folder: str | os.PathLike) -> tuple[bytes, str]:
    """A Hugging Face folder's known files, each read with the capped reader, as zip bytes and a name.

    Raises:
        CorruptFile: the folder has no ``config.json``.
    """
    root = Path(folder)
    if not (root / "config.json").is_file():
        raise CorruptFile(f"{root.name or root} is a folder without config.json, not a Hugging Face model.", HF_HINT)
    shards: set[str] = set()
    if not any((root / w).is_file() for w in WEIGHT_FILES):
        if not (root / SHARD_INDEX).is_file():
            sharded = any(root.glob("*.index.json"))
            raise CorruptFile(
                f"{root.name or root} has config.json but no model.safetensors or pytorch_model.bin"
                f"{' (only safetensors shards are read, not .bin shards)' if sharded else ''}.", HF_HINT,
            )
        shards = set(shard_names(read_source(root / SHARD_INDEX)[0]))
    files = read_folder(root, select=lambda p: p.parent == root and (p.name in KNOWN_FILES or p.name in shards))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path, data in files:
            zf.writestr(zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # same bytes, same digest
    return buf.getvalue(), root.name or "model"


class HFClassifier(nn.Module):
    """A transformers classifier as Glassbox sees a model: one tensor in, logits [N, K] out.

    Text: ids [N, L] (int64), ``attention_mask = ids != pad_id``. Image: pixel_values [N, C, H, W].
    """

    def __init__(self, model: nn.Module, modality: str, pad_id: int = 0):
        super().__init__()
        self.model = model
        self.modality = modality
        self.pad_id = int(pad_id)

    def _call(self, x: torch.Tensor, **kwargs: Any):
        if self.modality == "text":
            return self.model(input_ids=x, attention_mask=(x != self.pad_id).long(), **kwargs)
        return self.model(pixel_values=x, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x).logits

    def get_input_embeddings(self) -> nn.Module | None:
        """The token-embedding layer (text), else None."""
        return self.model.get_input_embeddings() if self.modality == "text" else None

    def attention_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[str]]:
        """Per layer [N, H, Lq, Lk] attention probabilities, and the layers' module names."""
        attentions = self._call(x, output_attentions=True).attentions
        if not attentions:
            return [], []
        found = [n for n, m in self.model.named_modules() if type(m).__name__.endswith("Attention")]
        names = [f"model.{n}" for n in found if not any(o.startswith(n + ".") for o in found)]  # innermost
        if len(names) != len(attentions):
            names = [f"layer {i}" for i in range(len(attentions))]
        return list(attentions), names


def load_huggingface_parts(data: bytes) -> LoadedParts:
    """Build a Hugging Face classifier from a zip of its folder (`folder_as_zip` or an upload).

    Raises:
        UnsafeFile: the config asks for remote code (``auto_map``), or a pickle beyond tensors.
        CorruptFile / IncompatibleInput: broken config or weights, unsupported task or model type.
    """
    zf = open_zip(data, "Hugging Face", gb_config.max_upload_bytes() * 2)
    names = zf.namelist()
    files = {}
    for known in KNOWN_FILES:
        member = find_member(names, known)
        if member is not None:
            files[known] = read_zip_member(zf, member, "Hugging Face")
    if "config.json" not in files:
        raise CorruptFile("The Hugging Face model has no config.json.", HF_HINT)
    shards: dict[str, bytes] = {}
    if SHARD_INDEX in files and not any(w in files for w in WEIGHT_FILES):
        for shard in shard_names(files[SHARD_INDEX]):
            member = find_member(names, shard)
            if member is None:
                raise CorruptFile(f"{SHARD_INDEX} names {shard}, which is not in the upload.", HF_HINT)
            shards[shard] = read_zip_member(zf, member, "Hugging Face")
    try:
        cfg = json.loads(files["config.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"config.json is not valid JSON ({first_line(exc)}).") from None
    if not isinstance(cfg, dict):
        raise CorruptFile("config.json is not a JSON object.", HF_HINT)
    if "auto_map" in cfg or cfg.get("trust_remote_code"):
        raise UnsafeFile(
            "config.json asks for remote code (auto_map); Glassbox never runs code that comes with a model.",
            "Use a model whose model_type is built into transformers.",
        )
    model = _build_model(cfg, files, shards)
    model.eval()
    modality = "image" if _is_image(model) else "text"
    pad_id = getattr(model.config, "pad_token_id", None)
    wrapper = HFClassifier(model, modality, 0 if pad_id is None else pad_id).eval()
    spec = _text_spec(model.config, files) if modality == "text" else _image_spec(model.config, files)
    return LoadedParts(module=wrapper, format=FORMAT, embedded_spec=spec, architecture=type(model).__name__,
                       extra={"hf_model_type": model.config.model_type})


def _is_image(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForImageClassification")


def _build_model(cfg: dict, files: dict[str, bytes], shards: dict[str, bytes]) -> nn.Module:
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI's stderr carries one line or nothing

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise IncompatibleInput(f"config.json names model_type {model_type!r}, which transformers does not know.", HF_HINT)
    try:
        config = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in cfg.items() if k != "model_type"})
    except Exception as exc:
        raise CorruptFile(f"config.json cannot be read as a {model_type} config ({first_line(exc)}).") from None
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    image = any(a.endswith("ForImageClassification") for a in archs)
    if archs and not image and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise IncompatibleInput(
            f"This is a {archs[0]}; Glassbox explains sequence and image classification models.", HF_HINT
        )
    auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    try:
        model_class = auto._model_mapping[type(config)]
    except KeyError:
        raise IncompatibleInput(f"transformers has no {'image' if image else 'sequence'} classification "
                                f"model for {model_type}.", HF_HINT) from None
    _check_weights(files, shards)
    # transformers renames checkpoint keys between versions (v5 converts the legacy names on load),
    # so the weights go through from_pretrained: from a private temporary folder, local files only,
    # with the config object built above (never a remote code path), safetensors or weights_only.
    with tempfile.TemporaryDirectory(prefix="glassbox-hf-") as tmp:
        for name in WEIGHT_FILES:
            if name in files:
                (Path(tmp) / name).write_bytes(files[name])
                break
        else:  # a sharded checkpoint: the index and its shards, names checked by shard_names
            (Path(tmp) / SHARD_INDEX).write_bytes(files[SHARD_INDEX])
            for shard, blob in shards.items():
                (Path(tmp) / shard).write_bytes(blob)
        try:
            model, info = model_class.from_pretrained(
                tmp, config=config, local_files_only=True, trust_remote_code=False,
                attn_implementation="eager", output_loading_info=True,
                use_safetensors="pytorch_model.bin" not in files,
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CorruptFile(f"The weights cannot be loaded ({first_line(exc)}).") from None
    bad = [*info.get("missing_keys", []), *info.get("unexpected_keys", []), *info.get("mismatched_keys", [])]
    if bad:
        raise CorruptFile(f"The weights do not fit config.json ({len(bad)} keys missing, unexpected "
                          f"or mis-shaped, e.g. {str(sorted(map(str, bad))[0])[:80]}).")
    return model


def _check_weights(files: dict[str, bytes], shards: dict[str, bytes]) -> None:
    """Read the weights ourselves first: safetensors parsed, a ``.bin`` only ever unpickled weights-only."""
    if shards:
        from safetensors.torch import load

        for name, blob in shards.items():
            try:
                load(blob)
            except Exception as exc:
                raise CorruptFile(f"{name} is damaged ({first_line(exc)}).") from None
        return
    if "model.safetensors" in files:
        from safetensors.torch import load

        try:
            load(files["model.safetensors"])
        except Exception as exc:
            raise CorruptFile(f"model.safetensors is damaged ({first_line(exc)}).") from None
        return
    if "pytorch_model.bin" in files:
        state = weights_only_load(files["pytorch_model.bin"], "pytorch_model.bin")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CorruptFile("pytorch_model.bin is not a state_dict of tensors.")
        return
    raise CorruptFile("The Hugging Face model has no model.safetensors or pytorch_model.bin.", HF_HINT)


def _class_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(int(config.num_labels))]


def _json(files: dict[str, bytes], name: str) -> dict:
    try:
        value = json.loads(files[name]) if name in files else {}
    except (ValueError, UnicodeDecodeError):
        raise CorruptFile(f"{name} is not valid JSON.") from None
    return value if isinstance(value, dict) else {}


def _vocabulary(files: dict[str, bytes]) -> list[str] | None:
    if "tokenizer.json" in files:
        from tokenizers import Tokenizer

        try:
            vocab = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")).get_vocab(with_added_tokens=True)
        except Exception as exc:
            raise CorruptFile(f"tokenizer.json cannot be read ({first_line(exc)}).") from None
        tokens = [f"[unused{i}]" for i in range(max(vocab.values(), default=-1) + 1)]
        for token, i in vocab.items():
            tokens[i] = token
        return tokens
    if "vocab.txt" in files:
        return files["vocab.txt"].decode("utf-8", errors="replace").splitlines()
    return None


def _text_spec(config: Any, files: dict[str, bytes]) -> InputSpec:
    tok_cfg = _json(files, "tokenizer_config.json")
    length = int(getattr(config, "max_position_embeddings", None) or MAX_TEXT_LENGTH)
    model_max = tok_cfg.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < length:
        length = model_max
    vocabulary = _vocabulary(files)
    cls = tok_cfg.get("cls_token")
    cls = cls.get("content") if isinstance(cls, dict) else cls
    cls = "[CLS]" if vocabulary and "[CLS]" in vocabulary else cls if vocabulary and cls in vocabulary else None
    return InputSpec(
        modality="text", input_shape=(min(length, MAX_TEXT_LENGTH),), dtype="int64",
        class_names=_class_names(config), vocabulary=vocabulary, cls_token=cls,
        lowercase=bool(tok_cfg.get("do_lower_case", True)),
        # the model's own tokenizer (BPE for RoBERTa / GPT-2, Unigram, ...) tokenises typed texts
        tokenizer=files["tokenizer.json"].decode("utf-8") if "tokenizer.json" in files else None,
    )


def _image_spec(config: Any, files: dict[str, bytes]) -> InputSpec:
    size = getattr(config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    pre = _json(files, "preprocessor_config.json")
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list)):
        mean = std = None
    return InputSpec(modality="image", input_shape=(int(getattr(config, "num_channels", 3)), int(h), int(w)),
                     dtype="float32", mean=mean, std=std, class_names=_class_names(config))
