"""How a model changed from checkpoint to checkpoint.

- `compute_weight_changes`: per layer, the relative weight change
  ||W_{t+1} - W_t|| / ||W_t|| between consecutive checkpoints (a layers x
  intervals table for a heatmap).
- `compute_attribution_drift`: the same inputs explained by every checkpoint
  (integrated gradients), and the Spearman rank correlation of each
  checkpoint's attributions with the final checkpoint's.

Checkpoints are read with the upload cap (`explain.loading.source.read_source`) and
weights-only (`explain.training.formats.load_checkpoint_dict`). `sort_checkpoints` /
`final_checkpoint` decide training order and the final checkpoint for the page and the report.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explain.errors import IncompatibleInput, UsageError
from explain.inputs.text import padding_mask
from explain.loading.source import read_source
from explain.model import LoadedModel
from explain.training.formats import load_checkpoint_dict

ProgressFn = Callable[[int, int], None]
#: progress units per checkpoint: drift reports (done, total) with total = UNITS * checkpoints.
UNITS = 1000

_STATE_KEYS = ("model_state_dict", "state_dict", "model", "weights", "module")
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


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
    """Read one checkpoint (a dict with a state dict, or a bare state dict), weights-only.

    Raises:
        TooLarge, CorruptFile: over the upload cap, missing or empty (`explain.loading.source.read_source`).
        UnsafeFile, CorruptFile: see `explain.training.formats.load_checkpoint_dict`.
        IncompatibleInput: no tensors found.
    """
    data, name = read_source(source, filename, default_name="checkpoint")
    obj = load_checkpoint_dict(data, name)
    state = obj
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    tensors = {str(k): v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise IncompatibleInput(f"{name}: no weights found (expected a state dict or a 'model_state_dict' entry).")
    epoch = obj.get("epoch")
    epoch = float(epoch) if isinstance(epoch, (int, float)) else epoch_from_name(name)
    label = checkpoint_label(name, epoch)
    meta = {k: v for k, v in obj.items() if k not in _STATE_KEYS}
    return Checkpoint(label, epoch, tensors, name, data, meta)


def read_checkpoints(sources: Iterable[str | os.PathLike | tuple[str, bytes]]) -> list[Checkpoint]:
    """Read several checkpoints (``(filename, bytes)`` pairs for uploads), in training order (`sort_checkpoints`)."""
    return sort_checkpoints(read_checkpoint(s) for s in sources)


# -- weight change -------------------------------------------------------------------
@dataclass
class WeightChange:
    """Relative weight change per layer between consecutive checkpoints.

    Attributes:
        layers: [L] layer (module) names.
        labels: [K] checkpoint labels.
        intervals: [K-1] ``"a → b"`` labels.
        values: [L, K-1] ||W_{t+1} - W_t|| / ||W_t|| (NaN where ||W_t|| = 0).
        norms: [L, K] ||W_t||.
    """

    layers: list[str]
    labels: list[str]
    intervals: list[str]
    values: np.ndarray
    norms: np.ndarray


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def compute_weight_changes(checkpoints: Sequence[Checkpoint]) -> WeightChange:
    """Per-layer relative change of the trainable weights (buffers such as BatchNorm's running stats excluded).

    A layer's weights are all its float parameters (weight and bias) together.

    Raises:
        IncompatibleInput: fewer than 2 checkpoints, or checkpoints of different models.
    """
    if len(checkpoints) < 2:
        raise IncompatibleInput("Weight change needs at least 2 checkpoints of the same model.")
    first = checkpoints[0].state_dict
    names = [n for n, t in first.items() if t.is_floating_point() and not n.endswith(_BUFFER_SUFFIXES)]
    for ckpt in checkpoints[1:]:
        sd = ckpt.state_dict
        bad = [n for n in names if n not in sd or sd[n].shape != first[n].shape]
        if bad:
            raise IncompatibleInput(
                f"{ckpt.source} is not a checkpoint of the same model as {checkpoints[0].source} "
                f"(e.g. {bad[0]!r} is missing or has another shape)."
            )
    layers: list[str] = []
    groups: dict[str, list[str]] = {}
    for n in names:
        layer = _layer_of(n)
        if layer not in groups:
            groups[layer] = []
            layers.append(layer)
        groups[layer].append(n)

    def flat(sd: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
        return torch.cat([sd[n].reshape(-1).double() for n in groups[layer]])

    k = len(checkpoints)
    norms = np.zeros((len(layers), k))
    values = np.full((len(layers), k - 1), np.nan)
    for li, layer in enumerate(layers):
        vecs = [flat(c.state_dict, layer) for c in checkpoints]
        for t in range(k):
            norms[li, t] = float(vecs[t].norm())
        for t in range(k - 1):
            if norms[li, t] > 0:
                values[li, t] = float((vecs[t + 1] - vecs[t]).norm()) / norms[li, t]
    labels = [c.label for c in checkpoints]
    intervals = [f"{a} → {b}" for a, b in zip(labels[:-1], labels[1:])]
    return WeightChange(layers, labels, intervals, values, norms)


# -- models per checkpoint ----------------------------------------------------------
def model_at(checkpoint: Checkpoint, reference: LoadedModel | None = None) -> LoadedModel:
    """A `LoadedModel` with the checkpoint's weights.

    With an eager ``reference`` model whose weights the checkpoint fits, a
    copy of it gets the weights (same spec); otherwise the checkpoint is loaded
    on its own with `explain.loading.loader.load_model` (it must name its
    architecture).
    """
    if reference is not None and reference.is_eager and isinstance(reference.module, torch.nn.Module):
        expected = reference.module.state_dict()
        sd = checkpoint.state_dict
        if set(expected) == set(sd) and all(expected[k].shape == sd[k].shape for k in sd):
            module = copy.deepcopy(reference.module).cpu()
            module.load_state_dict(sd, strict=True)
            module.eval()
            return LoadedModel(
                module=module, format="checkpoint", sha256=reference.sha256, spec=reference.spec,
                name=f"{reference.name} @ {checkpoint.label}", architecture=reference.architecture,
                extra={"epoch": checkpoint.epoch},
            ).to(reference.device)
    from explain.loading.loader import load_model

    spec = reference.spec if reference is not None else None
    loaded = load_model(checkpoint.data, spec=spec, filename=checkpoint.source)
    loaded.name = f"{loaded.name} @ {checkpoint.label}"
    return loaded


# -- attribution drift -------------------------------------------------------------------
@dataclass
class AttributionDrift:
    """The same inputs explained by each checkpoint.

    Attributes:
        labels: [K] checkpoint labels (the last one is the reference).
        epochs: [K] epochs (None where unknown).
        values: [K, N, ...] attributions shaped like the inputs.
        maps: [K, N, ...] what is shown and compared: images summed over
            channels ([K, N, H, W]); tabular and text as they are ([K, N, F]/[K, N, L]).
        correlation: [K, N] Spearman rank correlation of each checkpoint's
            map with the final checkpoint's, per input (text: padding excluded).
        target: [N] the explained class (the final checkpoint's prediction by default).
        method: the attribution method used.
    """

    labels: list[str]
    epochs: list[float | None]
    values: np.ndarray
    maps: np.ndarray
    correlation: np.ndarray
    target: np.ndarray
    method: str

    @property
    def mean_correlation(self) -> np.ndarray:
        """[K] correlation with the final checkpoint, averaged over inputs."""
        return np.nanmean(self.correlation, axis=1)


def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank (as ``scipy.stats.rankdata``, minus 1)."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(len(a))
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (flattened); NaN if either is constant."""
    ra, rb = _rank(np.ravel(a)), _rank(np.ravel(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def explain_with_ig(model: LoadedModel, inputs: np.ndarray, target: np.ndarray, steps: int,
                    progress: ProgressFn | None = None) -> np.ndarray:
    """Integrated gradients [N, ...] for ``target``: the registered method, else Captum's.

    The one place to swap the attribution method used for drift.
    """
    from explain.output import methods

    try:
        method = methods.get_method("integrated_gradients")
    except UsageError:
        method = None
    if method is not None:
        return np.asarray(method.explain(model, inputs, target, progress=progress, steps=steps).values)
    from captum.attr import IntegratedGradients  # fallback until the registry has the method

    x = model.as_tensor(inputs)
    attr = IntegratedGradients(model.module).attribute(x, target=torch.as_tensor(target), n_steps=steps)
    if progress:
        progress(1, 1)
    return attr.detach().cpu().numpy()


def display_map(values: np.ndarray, modality: str) -> np.ndarray:
    """What is shown per input: image attributions summed over channels ([N, C, H, W] -> [N, H, W])."""
    return values.sum(axis=1) if modality == "image" and values.ndim == 4 else values


def compute_attribution_drift(
    models: Sequence[LoadedModel],
    inputs: np.ndarray,
    labels: Sequence[str] | None = None,
    epochs: Sequence[float | None] | None = None,
    target: np.ndarray | int | None = None,
    steps: int = 32,
    progress: ProgressFn | None = None,
) -> AttributionDrift:
    """Explain ``inputs`` with every checkpoint's model and compare with the last.

    Args:
        models: [K] the checkpoints' models, oldest first; the last is the reference.
        inputs: model-ready batch [N, ...].
        target: class per input, one class, or None for the final model's prediction
            (the same class is explained at every checkpoint).
        steps: integration steps.
        progress: called with (done, total), total = `UNITS` x checkpoints; checkpoint i
            covers [UNITS * i, UNITS * (i + 1)].
    """
    if len(models) < 2:
        raise IncompatibleInput("Attribution drift needs at least 2 checkpoints.")
    inputs = np.asarray(inputs)
    final = models[-1]
    if target is None:
        target = final.predict_logits(inputs).argmax(axis=1)
    target = np.broadcast_to(np.asarray(target, dtype=np.int64), (len(inputs),)).copy()
    k = len(models)
    values = []
    for i, model in enumerate(models):
        inner = None
        if progress is not None:
            inner = lambda done, total, i=i: progress(i * UNITS + int(UNITS * done / max(total, 1)), k * UNITS)
        values.append(explain_with_ig(model, inputs, target, steps, inner))
        if progress is not None:
            progress((i + 1) * UNITS, k * UNITS)
    values_arr = np.stack(values)  # [K, N, ...]
    maps = np.stack([display_map(v, final.modality) for v in values])
    n = len(inputs)
    keep = [np.ones(maps.shape[2:], dtype=bool) for _ in range(n)]
    if final.modality == "text":  # padding is not part of the explanation
        keep = [~padding_mask(inputs[i].reshape(maps.shape[2:]), final.spec) for i in range(n)]
    corr = np.array([[spearman(maps[j, i][keep[i]], maps[-1, i][keep[i]]) for i in range(n)] for j in range(k)])
    return AttributionDrift(
        labels=list(labels) if labels is not None else [m.name for m in models],
        epochs=list(epochs) if epochs is not None else [None] * k,
        values=values_arr, maps=maps, correlation=corr, target=target, method="integrated_gradients",
    )


def compute_checkpoint_drift(
    checkpoints: Sequence[Checkpoint], reference: LoadedModel | None, inputs: np.ndarray,
    target: np.ndarray | int | None = None, steps: int = 32, progress: ProgressFn | None = None,
) -> AttributionDrift:
    """`compute_attribution_drift` for checkpoints (models built with `model_at`)."""
    models = [model_at(c, reference) for c in checkpoints]
    return compute_attribution_drift(
        models, inputs, [c.label for c in checkpoints], [c.epoch for c in checkpoints], target, steps, progress,
    )
