"""Checkpoints as data: read, labelled and put in training order (`explain.training.evolution` compares them).

Checkpoints are read with the upload cap (`explain.loading.source.read_source`) and as data:
torch.save files weights-only (`explain.training.formats.load_checkpoint_dict`), safetensors, TorchScript
archives' tensors (`explain.loading.script_tensors`, the graph unopened), and
Hugging Face folders or zips checked as a model upload is (`read_hf_checkpoint`: nothing is built
here). `sort_checkpoints` / `final_checkpoint` decide training order and the final checkpoint for the page
and the report.
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explain.errors import CorruptFile, IncompatibleInput
from explain.loading import huggingface
from explain.loading.export import is_export_archive
from explain.loading.script_tensors import read_script_state
from explain.loading.source import Archive, find_member, more_values_than_bytes, open_archive, read_source
from explain.loading.torchscript import is_torchscript
from explain.loading.weights import read_safetensors
from explain.training.formats import load_checkpoint_dict

_STATE_KEYS = ("model_state_dict", "state_dict", "model", "weights", "module")
#: What a checkpoint may be, for refusals.
CHECKPOINT_FORMATS = ("Give weights-only torch.save files (.pt/.pth/.ckpt), safetensors, or Hugging Face "
                      "model folders or zips.")


@dataclass
class Checkpoint:
    """One saved state of a model.

    Attributes:
        label: display label (``epoch 4`` or the file name).
        epoch: the epoch stored in the file (or parsed from its name), else None.
        state_dict: parameter name -> tensor (CPU).
        source: file name.
        data: the file's bytes (to rebuild a model with `explain.loading.loader`).
        meta: the checkpoint's other plain entries (architecture, config, spec, history).
    """

    label: str
    epoch: float | None
    state_dict: dict[str, torch.Tensor]
    source: str
    data: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)


def epoch_from_name(name: str) -> float | None:
    """The epoch a file name states (``epoch_7.pt``, ``ep3``, ``step=200``), else None."""
    match = re.search(r"(?:epoch|ep|step)[_\-=]?(\d+)", Path(name).name.lower())
    return float(match.group(1)) if match else None


def checkpoint_label(name: str, epoch: float | None = None) -> str:
    """How a checkpoint is named on screen: ``epoch 7`` when its epoch is known (stored, else
    from the name, see `epoch_from_name`) and whole, else the file name without extension."""
    if epoch is None:
        epoch = epoch_from_name(name)
    return f"epoch {int(epoch)}" if epoch is not None and float(epoch).is_integer() else Path(name).stem


def checkpoint_sort_key(name: str, epoch: float | None = None) -> tuple:
    """Where a checkpoint falls in training order (sort ascending: oldest first, the final one last).

    By ``epoch`` (from the checkpoint's metadata) when known, else by the epoch a name such as
    ``epoch_7`` gives, else by the last number in the file name compared as a number
    (``ckpt_9`` before ``ckpt_10``); a name without a number comes after all of those, by name.

    Args:
        name: the file name (a path's directories are ignored).
        epoch: the epoch stored in the checkpoint, if read.
    """
    stem = Path(name).name
    if epoch is None:
        epoch = epoch_from_name(stem)
    if epoch is None:
        numbers = re.findall(r"\d+", Path(stem).stem)
        epoch = float(numbers[-1]) if numbers else None
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", stem))
    return (epoch is None, epoch if epoch is not None else 0.0, natural)


def sort_checkpoints(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """Checkpoints in training order (`checkpoint_sort_key`), oldest first."""
    return sorted(checkpoints, key=lambda c: checkpoint_sort_key(c.source, c.epoch))


def final_checkpoint(checkpoints: Iterable[Checkpoint]) -> Checkpoint:
    """The latest checkpoint in training order (the one whose history is the longest).

    Raises:
        IncompatibleInput: no checkpoints.
    """
    ordered = sort_checkpoints(checkpoints)
    if not ordered:
        raise IncompatibleInput("No checkpoints given.")
    return ordered[-1]


def read_checkpoint(source: str | os.PathLike | bytes | tuple[str, bytes], filename: str | None = None) -> Checkpoint:
    """Read one checkpoint's weights: a torch.save dict with a state dict or a bare state dict (weights-only),
    a safetensors file, or a Hugging Face model (a folder, or its zip: `read_hf_checkpoint`).

    Raises:
        TooLarge, CorruptFile: over the upload cap, missing or empty (`explain.loading.source.read_source`).
        UnsafeFile, CorruptFile: see `explain.training.formats.load_checkpoint_dict`; a zip that is
            neither a torch.save file nor a Hugging Face model.
        IncompatibleInput: no tensors found.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():  # a Hugging Face checkpoint folder
        data, name = checkpoint_folder_as_zip(source)
        name = filename or name
    else:
        data, name = read_source(source, filename, default_name="checkpoint")
    if data[:2] == b"PK":
        archive = open_archive(data, "checkpoint")
        if huggingface.is_hf_archive(archive.names):
            return read_hf_checkpoint(data, name, archive)
        if is_torchscript(archive.names):  # its tensors read as data (`script_tensors`); the graph is not opened
            epoch = epoch_from_name(name)
            return Checkpoint(checkpoint_label(name, epoch), epoch, read_script_state(data, name), name, data,
                              {"format": "torchscript"})
        if is_export_archive(archive, archive.names):  # its weights sit inside a graph only opened in a sandbox
            raise CorruptFile(f"{name} is a torch.export .pt2 program; checkpoints are compared by their weights "
                              "alone.", CHECKPOINT_FORMATS)
        if find_member(archive.names, "data.pkl") is None:
            raise CorruptFile(f"{name} is a zip archive but neither a torch.save checkpoint nor a Hugging Face "
                              "model (config.json with model.safetensors or pytorch_model.bin).", CHECKPOINT_FORMATS)
    if _is_safetensors(data):
        tensors = in_layer_order(read_safetensors(data)[0])
        epoch = epoch_from_name(name)
        return Checkpoint(checkpoint_label(name, epoch), epoch, tensors, name, data, {"format": "safetensors"})
    obj = load_checkpoint_dict(data, name)
    state = obj
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    tensors = {str(k): v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if sum(t.numel() for t in tensors.values()) > len(data):  # compared, each is copied whole
        raise more_values_than_bytes(f"{name}: the checkpoint", len(data))
    if not tensors:
        raise IncompatibleInput(f"{name}: no weights found (expected a state dict or a 'model_state_dict' entry).")
    epoch = obj.get("epoch")
    epoch = float(epoch) if isinstance(epoch, (int, float)) else epoch_from_name(name)
    label = checkpoint_label(name, epoch)
    meta = {} if state is obj else {k: v for k, v in obj.items() if k not in _STATE_KEYS}
    return Checkpoint(label, epoch, tensors, name, data, meta)


def checkpoint_folder_as_zip(folder: str | os.PathLike) -> tuple[bytes, str]:
    """A Hugging Face checkpoint folder as zip bytes and a name (``FOLDER.zip``): the files a model
    upload reads (`huggingface.folder_as_zip`) and a Trainer's ``trainer_state.json`` (its epoch)."""
    data, name = huggingface.folder_as_zip(folder)
    state = Path(folder) / "trainer_state.json"
    if state.is_file():
        buf = io.BytesIO(data)
        with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as zf:
            info = zipfile.ZipInfo(state.name, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, read_source(state)[0])
        data = buf.getvalue()
    return data, f"{name}.zip"


def read_hf_checkpoint(data: bytes, name: str, archive: Archive | None = None) -> Checkpoint:
    """A Hugging Face model (zip bytes) as a checkpoint: its weights read here as data, nothing built.

    The upload is checked as a model upload is (`huggingface.read_huggingface`: no remote code, every
    file bounded, the config sized against the weights on the ``meta`` device); the weights are read
    from safetensors (or a weights-only ``pytorch_model.bin``). A Trainer checkpoint's
    ``trainer_state.json`` gives the epoch. The model itself is only built in a model process, by
    `model_at` through `explain.loading.loader.load_model`.
    """
    archive = archive or open_archive(data, "Hugging Face")
    upload = huggingface.read_huggingface(data, archive)
    epoch = _trainer_epoch(archive)
    if epoch is None:
        epoch = epoch_from_name(name)
    meta = {"format": huggingface.FORMAT, "architecture": upload.model_class.__name__,
            "hf_model_type": upload.config.model_type}
    return Checkpoint(checkpoint_label(name, epoch), epoch, in_layer_order(hf_tensors(upload)), name, data, meta)


def hf_tensors(upload: huggingface.HFUpload) -> dict[str, torch.Tensor]:
    """The weights of a checked Hugging Face upload, by name (safetensors, shards, or a weights-only .bin)."""
    return huggingface.state_dict(upload)




def in_layer_order(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors by name in natural order (``layer.2`` before ``layer.10``): a safetensors file keeps no
    module order, and this one puts embeddings, numbered layers and the head in the order they run."""
    def key(name: str) -> tuple:
        return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))

    return {k: tensors[k] for k in sorted(tensors, key=key)}


def _trainer_epoch(archive: Archive) -> float | None:
    """The epoch a Trainer checkpoint's ``trainer_state.json`` records, else None."""
    member = find_member(archive.names, "trainer_state.json")
    if member is None:
        return None
    try:
        epoch = json.loads(archive.read(member, huggingface.MAX_JSON_BYTES)).get("epoch")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def _is_safetensors(data: bytes) -> bool:
    n = int.from_bytes(data[:8], "little") if len(data) >= 10 else 0
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def read_checkpoints(sources: Iterable[str | os.PathLike | tuple[str, bytes]]) -> list[Checkpoint]:
    """Read several checkpoints (``(filename, bytes)`` pairs for uploads), in training order (`sort_checkpoints`)."""
    return sort_checkpoints(read_checkpoint(s) for s in sources)


# -- weight change -------------------------------------------------------------------
