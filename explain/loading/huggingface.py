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

Every file is bounded before it is used: text files by their size in the zip's
directory, ``config.json`` by an estimated parameter count (`estimate_parameters`:
vocabulary, widths, layers, labels) checked against the operator's caps and the
weights present (counted from their headers, never read whole in the server:
`weight_shapes`) before any config object or module exists, then by the exact
count of the model built on the ``meta`` device (no tensor memory) (those three in
`explain.loading.hf_sizing`), and ``tokenizer.json`` by its ids (`explain.inputs.text.tokenizer_vocab`).
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explain import config as gb_config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile, one_line
from explain.inputs.text import tokenizer_vocab
from explain.loading.hf_sizing import HF_HINT, check_config_size, check_exact_size, weight_shapes
from explain.loading.source import (
    Archive,
    LoadedParts,
    find_member,
    open_archive,
    read_folder,
    read_source,
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
               "preprocessor_config.json", "special_tokens_map.json", "chat_template.jinja")
#: The longest text a text model's spec takes (tokens).
MAX_TEXT_LENGTH = 128
#: Largest JSON file (config, tokenizer config, preprocessor config) read; a config with
#: ImageNet-21k's labels is about 1 MiB. ``tokenizer.json`` / ``vocab.txt`` use
#: `explain.config.max_tokenizer_bytes`; weights are bounded by the archive's cap.
MAX_JSON_BYTES = 16 * 2**20


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
    A causal LM (``task="causal_lm"``) maps ids [N, L] to its next-token logits [N, V] (the last
    position, no padding); `explain.generation` explains it through ``self.model``.
    """

    def __init__(self, model: nn.Module, modality: str, pad_id: int = 0, task: str = "classification"):
        super().__init__()
        self.model = model
        self.modality = modality
        self.pad_id = int(pad_id)
        self.task = task

    def _call(self, x: torch.Tensor, **kwargs: Any):
        if self.modality == "text":
            return self.model(input_ids=x, attention_mask=(x != self.pad_id).long(), **kwargs)
        return self.model(pixel_values=x, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "causal_lm":
            return self.model(input_ids=x, use_cache=False).logits[:, -1]  # [N, L] -> [N, V]
        return self._call(x).logits

    def get_input_embeddings(self) -> nn.Module | None:
        """The token-embedding layer (text), else None."""
        return self.model.get_input_embeddings() if self.modality == "text" else None

    @property
    def has_attention(self) -> bool:
        """True when the model has attention layers (a transformer; not a ResNet or a ConvNeXt)."""
        return any(type(m).__name__.endswith(("Attention", "SelfAttention")) for m in self.model.modules())

    def attention_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[str]]:
        """Per layer [N, H, Lq, Lk] attention probabilities, and the layers' module names ([] for a CNN)."""
        attentions = getattr(self._call(x, output_attentions=True), "attentions", None)
        if not attentions:
            return [], []
        found = [n for n, m in self.model.named_modules() if type(m).__name__.endswith("Attention")]
        names = [f"model.{n}" for n in found if not any(o.startswith(n + ".") for o in found)]  # innermost
        if len(names) != len(attentions):
            names = [f"layer {i}" for i in range(len(attentions))]
        return list(attentions), names


@dataclass
class HFUpload:
    """A Hugging Face upload as the server reads and checks it, before anything is built.

    Attributes:
        files: the known files' bytes (`KNOWN_FILES`) but the weights, which the server never reads whole.
        weights: each weight file (``model.safetensors``, ``pytorch_model.bin`` or a sharded checkpoint's
            shards, in the index's order) -> its member of ``archive``, read by `state_dict` (a model process).
        shapes: each weight's shape, from the files' headers (`weight_shapes`).
        config: the transformers config object; model_class: the class to build.
        spec: the spec read from the config and the tokenizer / preprocessor files.
    """

    files: dict[str, bytes]
    weights: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    archive: Archive
    config: Any
    model_class: Any
    modality: str
    spec: InputSpec
    task: str = "classification"

    @property
    def pad_id(self) -> int:
        pad = getattr(self.config, "pad_token_id", None)
        return 0 if pad is None else int(pad)


def read_huggingface(data: bytes, archive: Archive | None = None) -> HFUpload:
    """Read and check a Hugging Face upload: every file bounded, the config sized against the weights.

    Nothing is built: the model is built from these parts only in its model process
    (`build_classifier`, through `explain.loading.model_process`).

    Raises:
        UnsafeFile: the config asks for remote code (``auto_map``), or a pickle beyond tensors.
        CorruptFile / IncompatibleInput / TooLarge: broken or oversized config or weights,
            unsupported task or model type.
    """
    archive = archive or open_archive(data, "Hugging Face")
    names = archive.names
    files, found = {}, {}
    for known in KNOWN_FILES:
        member = find_member(names, known)
        if member is not None and known in WEIGHT_FILES:
            found[known] = member  # never read whole here (`weight_shapes`)
        elif member is not None:
            files[known] = archive.read(member, *_member_cap(known))
    if "config.json" not in files:
        raise CorruptFile("The Hugging Face model has no config.json.", HF_HINT)
    first = next((w for w in WEIGHT_FILES if w in found), None)  # model.safetensors before pytorch_model.bin
    weights = {first: found[first]} if first else {}
    if SHARD_INDEX in files and not weights:
        for shard in shard_names(files[SHARD_INDEX]):
            member = find_member(names, shard)
            if member is None:
                raise CorruptFile(f"{SHARD_INDEX} names {shard}, which is not in the upload.", HF_HINT)
            weights[shard] = member
    try:
        cfg = json.loads(files["config.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"config.json is not valid JSON ({one_line(exc, 200, typed=False)}).") from None
    if not isinstance(cfg, dict):
        raise CorruptFile("config.json is not a JSON object.", HF_HINT)
    if "auto_map" in cfg or cfg.get("trust_remote_code"):
        raise UnsafeFile(
            "config.json asks for remote code (auto_map); Glassbox never runs code that comes with a model.",
            "Use a model whose model_type is built into transformers.",
        )
    # every file bounded before transformers builds anything: weights counted, config sized, tokenizer ids checked
    shapes, available = weight_shapes(archive, weights)  # tied weights counted once, as parameters() counts them
    check_config_size(cfg, available)
    vocab_size = cfg.get("vocab_size")
    vocabulary = _vocabulary(files, vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else None)
    config, model_class, task = _model_class(cfg, set(shapes))
    check_exact_size(model_class, config, available)
    modality = "image" if task == "image" else "text"
    task = "causal_lm" if task == "causal_lm" else "classification"
    spec = _text_spec(config, files, vocabulary, task) if modality == "text" else _image_spec(config, files)
    return HFUpload(files, weights, shapes, archive, config, model_class, modality, spec, task)


def check_huggingface_parts(data: bytes, archive: Archive | None = None) -> LoadedParts:
    """A Hugging Face upload checked here and built and run only in its model process.

    The server reads and sizes every file (`read_huggingface`); the child imports the
    model's transformers module before it locks itself down and builds it from the
    same bytes after (`build_classifier`).
    """
    from explain.loading.model_process import load_remote_parts

    upload = read_huggingface(data, archive)
    return load_remote_parts(
        data, FORMAT, upload.spec, architecture=upload.model_class.__name__,
        extra={"hf_model_type": upload.config.model_type}, imports=[upload.model_class.__module__])


def load_huggingface_parts(data: bytes, archive: Archive | None = None) -> LoadedParts:
    """Read, check and build a Hugging Face classifier here (in its model process, or for a trusted caller)."""
    upload = read_huggingface(data, archive)
    wrapper = build_classifier(upload)
    return LoadedParts(module=wrapper, format=FORMAT, embedded_spec=upload.spec,
                       architecture=upload.model_class.__name__, extra={"hf_model_type": upload.config.model_type})


def build_classifier(upload: HFUpload) -> HFClassifier:
    """The eval-mode `HFClassifier` built from a checked upload (weights from memory: no file is written)."""
    model = _build_model(upload)
    model.eval()
    return HFClassifier(model, upload.modality, upload.pad_id, upload.task).eval()


def _model_class(cfg: dict, weight_names: set[str]) -> tuple[Any, Any, str]:
    """The config object, the model class and its task: ``image`` / ``text`` classification or
    ``causal_lm`` (a ``*ForCausalLM`` or ``*LMHeadModel`` of the config's own ``model_type``, named by
    ``architectures``, or, in a config.json without them, the one whose weights ``weight_names`` are
    (`_holds_causal_lm`); nothing built but on ``meta``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise IncompatibleInput(f"config.json names model_type {model_type!r}, which transformers does not know.", HF_HINT)
    try:
        config = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in cfg.items() if k != "model_type"})
    except Exception as exc:
        raise CorruptFile(f"config.json cannot be read as a {model_type} config ({one_line(exc, 200, typed=False)}).") from None
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    causal = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if causal is not None and (causal.__name__ in archs if archs else _holds_causal_lm(causal, config, weight_names)):
        return config, causal, "causal_lm"
    image = any(a.endswith("ForImageClassification") for a in archs)
    if archs and not image and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise IncompatibleInput(
            f"This is a {archs[0]}; Glassbox explains sequence and image classification models "
            "and causal language models.", HF_HINT
        )
    auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    try:
        model_class = auto._model_mapping[type(config)]
    except KeyError:
        raise IncompatibleInput(f"transformers has no {'image' if image else 'sequence'} classification "
                                f"model for {model_type}.", HF_HINT) from None
    return config, model_class, "image" if image else "text"


#: The first name of a classification head's weights (``score``: decoders; ``classifier``: encoders, images).
CLASSIFIER_HEADS = ("score", "classifier", "pre_classifier")


def _holds_causal_lm(causal: Any, config: Any, weight_names: set[str]) -> bool:
    """True when ``weight_names`` are the causal LM's: every parameter of ``causal`` built from ``config`` (on
    ``meta``) and no classification head. A config.json written by ``config.save_pretrained`` (beside weights
    saved with ``torch.save``) has no ``architectures``; read as a classifier, a causal LM's config was refused
    as asking for more parameters than its weights hold (the classifier's head)."""
    try:
        with torch.device("meta"):
            model = causal(config)
    except Exception:
        return False
    extra = weight_names - set(model.state_dict())
    return ({name for name, _ in model.named_parameters()} <= weight_names
            and not any(name.split(".")[0] in CLASSIFIER_HEADS for name in extra))


def state_dict(upload: HFUpload) -> dict[str, torch.Tensor]:
    """The weights of a checked upload by name, read whole from its archive here (a model process, or the
    Training page's checkpoint reader): safetensors (or its shards) parsed, a ``.bin`` weights-only.

    Raises:
        CorruptFile: damaged weights, or a ``.bin`` that is not a state dict of tensors.
    """
    from safetensors.torch import load

    if "pytorch_model.bin" in upload.weights:
        state = weights_only_load(upload.archive.read(upload.weights["pytorch_model.bin"]), "pytorch_model.bin")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CorruptFile("pytorch_model.bin is not a state_dict of tensors.")
        return state
    state: dict[str, torch.Tensor] = {}
    for name, member in upload.weights.items():
        try:
            state.update(load(upload.archive.read(member)))
        except Exception as exc:  # safetensors' own error types
            raise CorruptFile(f"{name} is damaged ({one_line(exc, 200, typed=False)}).") from None
    return state


def _build_model(upload: HFUpload) -> nn.Module:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI's stderr carries one line or nothing
    # transformers renames checkpoint keys between versions (v5 converts the legacy names on load),
    # so the weights go through from_pretrained, from memory, with the config object read above
    # (never a remote code path); a .bin was unpickled weights-only.
    try:
        model, info = upload.model_class.from_pretrained(
            None, config=upload.config, state_dict=state_dict(upload), local_files_only=True,
            trust_remote_code=False, attn_implementation="eager", output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CorruptFile(f"The weights cannot be loaded ({one_line(exc, 200, typed=False)}).") from None
    bad = [*info.get("missing_keys", []), *info.get("unexpected_keys", []), *info.get("mismatched_keys", [])]
    if bad:
        raise CorruptFile(f"The weights do not fit config.json ({len(bad)} keys missing, unexpected "
                          f"or mis-shaped, e.g. {str(sorted(map(str, bad))[0])[:80]}).")
    return model


def _member_cap(known: str) -> tuple[int | None, str | None]:
    """The most bytes read of a known file (its declared size in the zip is checked before reading), and a hint."""
    if known in ("tokenizer.json", "vocab.txt"):
        return gb_config.max_tokenizer_bytes(), "An operator can raise it with GLASSBOX_MAX_TOKENIZER_MB."
    return (MAX_JSON_BYTES if known.endswith((".json", ".jinja")) else None), None


def _class_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(int(config.num_labels))]


def _json(files: dict[str, bytes], name: str) -> dict:
    try:
        value = json.loads(files[name]) if name in files else {}
    except (ValueError, UnicodeDecodeError):
        raise CorruptFile(f"{name} is not valid JSON.") from None
    return value if isinstance(value, dict) else {}


def _vocabulary(files: dict[str, bytes], vocab_size: int | None) -> list[str] | None:
    """The tokens by id; ids are checked below the model's ``vocab_size`` before the list is built."""
    if "tokenizer.json" in files:
        vocab = tokenizer_vocab(files["tokenizer.json"], vocab_size)
        tokens = [f"[unused{i}]" for i in range(max(vocab.values(), default=-1) + 1)]
        for token, i in vocab.items():
            tokens[i] = token
        return tokens
    if "vocab.txt" in files:
        lines, cap = files["vocab.txt"].count(b"\n"), gb_config.max_vocabulary()
        if lines > cap:
            raise TooLarge(f"vocab.txt holds {lines:,} lines, over the {cap:,}-token limit.",
                           "An operator can raise it with GLASSBOX_MAX_VOCABULARY.")
        return files["vocab.txt"].decode("utf-8", errors="replace").splitlines()
    return None


def _text_spec(config: Any, files: dict[str, bytes], vocabulary: list[str] | None,
               task: str = "classification") -> InputSpec:
    tok_cfg = _json(files, "tokenizer_config.json")
    causal = task == "causal_lm"
    template = tok_cfg.get("chat_template") if causal else None  # data: a causal LM's chat template, never run
    if causal and "chat_template.jinja" in files:  # beside tokenizer_config.json, it wins (as in transformers)
        template = files["chat_template.jinja"].decode("utf-8", errors="replace")
    length = int(getattr(config, "max_position_embeddings", None) or MAX_TEXT_LENGTH)
    model_max = tok_cfg.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < length:
        length = model_max
    cls = tok_cfg.get("cls_token")
    cls = cls.get("content") if isinstance(cls, dict) else cls
    cls = "[CLS]" if vocabulary and "[CLS]" in vocabulary else cls if vocabulary and cls in vocabulary else None
    return InputSpec(
        modality="text", input_shape=(min(length, MAX_TEXT_LENGTH),), dtype="int64",
        class_names=[] if causal else _class_names(config), vocabulary=vocabulary, cls_token=None if causal else cls,
        lowercase=bool(tok_cfg.get("do_lower_case", not causal)), task=task,
        chat_template=template if isinstance(template, str) else None,
        # the model's own tokenizer (BPE for RoBERTa / GPT-2, Unigram, ...) tokenises typed texts
        tokenizer=files["tokenizer.json"].decode("utf-8") if "tokenizer.json" in files else None,
    )


def _image_spec(config: Any, files: dict[str, bytes]) -> InputSpec:
    """The spec of an image model: its own image processor's output size, mean and std when it has one.

    A ``preprocessor_config.json`` whose processor gives every picture one size (resize and / or crop)
    sets the input shape, so a model-ready array at that size is accepted as it is; one whose output
    depends on the picture's shape keeps its mean / std, and pictures are stretched to the config's
    ``image_size``.
    """
    from explain.inputs.images import check_image_processor, processor_output_shape
    from explain.spec import check_processor_config

    size = getattr(config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    channels = int(getattr(config, "num_channels", 3))
    shape = (channels, int(h), int(w))
    mean = std = processor = None
    if "preprocessor_config.json" in files:
        pre = _json(files, "preprocessor_config.json")
        if isinstance(pre, dict) and "size" not in pre and "crop_size" not in pre:
            # a hand-written config without a size: the model's own image_size, not the class default
            pre = {**pre, "size": {"height": int(h), "width": int(w)}, "do_center_crop": False}
        try:
            pre = check_image_processor(pre, config.model_type)
        except IncompatibleInput:  # no processor class for it in transformers: its mean / std still hold
            check_processor_config(pre)
        if pre.get("do_normalize", True):
            mean, std = pre.get("image_mean"), pre.get("image_std")
        fixed = processor_output_shape(pre, channels)
        if fixed is not None and fixed[0] == channels:
            shape, processor = fixed, pre
    if not (isinstance(mean, list) and isinstance(std, list)):
        mean = std = None
    return InputSpec(modality="image", input_shape=shape, dtype="float32", mean=mean, std=std,
                     class_names=_class_names(config), image_processor=processor)
