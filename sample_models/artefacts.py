"""Write a trained sample model in every format Glassbox loads.

All files carry the model's `InputSpec` as JSON so they load without a
separate spec: safetensors metadata, TorchScript / ``.pt2`` extra files
(``glassbox_spec.json``), and the ``spec`` entry of each checkpoint.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from explain.spec import SPEC_FILENAME, InputSpec

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr")
#: The dynamic batch range of ``model.pt2``.
MAX_BATCH = 4096


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch ``train_log.csv`` with :data:`LOG_COLUMNS`."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row[k]) for k in LOG_COLUMNS})


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.6g}"


def save_checkpoint(
    path: Path, model: nn.Module, epoch: int, history: list[dict[str, float]],
    architecture: str, config: dict[str, Any], spec: InputSpec,
) -> None:
    """A weights-only checkpoint: loads with ``torch.load(f, weights_only=True)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        {
            "model_state_dict": state,
            "epoch": int(epoch),
            "history": [dict(row) for row in history],
            "architecture": architecture,
            "config": json.loads(json.dumps(config)),
            "spec": spec.to_dict(),
        },
        path,
    )


def save_safetensors(path: Path, model: nn.Module, architecture: str, config: dict[str, Any], spec: InputSpec) -> None:
    """Weights plus ``glassbox.architecture`` / ``glassbox.config`` / ``glassbox.spec`` metadata."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "glassbox.architecture": architecture,
        "glassbox.config": json.dumps(config),
        "glassbox.spec": spec.to_json(),
    }
    save_file(state, str(path), metadata=metadata)


def save_torchscript(path: Path, model: nn.Module, spec: InputSpec) -> None:
    """``torch.jit.script`` (not trace: the transformer's mask checks are data dependent)."""
    scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(path), _extra_files={SPEC_FILENAME: spec.to_json()})


def save_exports(directory: Path, model: nn.Module, example: torch.Tensor, spec: InputSpec) -> None:
    """``model.pt2`` (dynamic batch 1..MAX_BATCH) and ``model_static.pt2`` (batch 1).

    Args:
        example: a model-ready batch of at least 2 samples ([N, ...]).
    """
    model = model.eval()
    extra = {SPEC_FILENAME: spec.to_json()}
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(dynamic, str(directory / "model.pt2"), extra_files=extra)
    static = torch.export.export(model, (example[:1],))
    torch.export.save(static, str(directory / "model_static.pt2"), extra_files=extra)


def save_spec(path: Path, spec: InputSpec) -> None:
    path.write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
