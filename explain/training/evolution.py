"""How a model changed from checkpoint to checkpoint.

- `compute_weight_changes`: per layer, the relative weight change
  ||W_{t+1} - W_t|| / ||W_t|| between consecutive checkpoints (a layers x
  intervals table for a heatmap).
- `compute_attribution_drift`: the same inputs explained by every checkpoint
  (integrated gradients), and the Spearman rank correlation of each
  checkpoint's attributions with the final checkpoint's.

Checkpoints are read as data by `explain.training.checkpoints`. A checkpoint becomes a model in
`model_at`: an eager reference's copy, or through
`explain.loading.loader.load_model`, so a Hugging Face checkpoint (a zip, or a ``.pth`` of the loaded
Hugging Face model, given the reference's config) is built and run only in its model process.
"""
from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from explain.errors import IncompatibleInput, UsageError
from explain.inputs.text import padding_mask
from explain.loading import huggingface
from explain.loading.script_tensors import tensor_refs, with_weights
from explain.loading.source import open_archive
from explain.loading.weights import WeightsRefused, key_variants
from explain.model import LoadedModel
from explain.progress import ProgressFn, report_progress
from explain.training.checkpoints import Checkpoint

if TYPE_CHECKING:  # types only
    from explain.workspace import Actor, Workspace

#: progress units per checkpoint: drift reports (done, total) with total = UNITS * checkpoints.
UNITS = 1000

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


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


def aligned_states(checkpoints: Sequence[Checkpoint]) -> list[dict[str, torch.Tensor]]:
    """The checkpoints' state dicts under one naming: a wrapper prefix (``model.``, ``module.``,
    `explain.loading.weights.key_variants`) that some carry and others do not is stripped, so a
    Hugging Face zip and a ``.pth`` of ``model.state_dict()`` from a Lightning module compare.

    Raises:
        IncompatibleInput: a checkpoint whose weights are not those of the first one's model
            (one line: how many weights differ and one example).
    """
    first = checkpoints[0]
    best: tuple[int, str] | None = None
    variants = key_variants(first.state_dict)  # every key under a wrapper prefix: the layers' own names first
    for base in sorted(variants, key=lambda v: (v is variants[0], len(v) < len(first.state_dict))):
        names = {n: tuple(t.shape) for n, t in base.items() if t.is_floating_point() and not n.endswith(_BUFFER_SUFFIXES)}
        states = [base]
        for ckpt in checkpoints[1:]:
            match = next((v for v in key_variants(ckpt.state_dict)
                          if all(n in v and tuple(v[n].shape) == shape for n, shape in names.items())), None)
            if match is None:
                sd = ckpt.state_dict
                bad = [n for n, shape in names.items() if n not in sd or tuple(sd[n].shape) != shape]
                if best is None or len(bad) < best[0]:
                    best = (len(bad), f"{ckpt.source} is not a checkpoint of the same model as {first.source} "
                                      f"({len(bad)} of its {len(names)} weights are missing or shaped otherwise, "
                                      f"e.g. {bad[0]!r}).")
                break
            states.append(match)
        else:
            return states
    raise IncompatibleInput(best[1] if best else "The checkpoints hold different models.",
                            "Compare checkpoints of one model (the same architecture and config).")


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
    states = aligned_states(checkpoints)
    first = states[0]
    names = [n for n, t in first.items() if t.is_floating_point() and not n.endswith(_BUFFER_SUFFIXES)]
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
        vecs = [flat(sd, layer) for sd in states]
        for t in range(k):
            norms[li, t] = float(vecs[t].norm())
        for t in range(k - 1):
            if norms[li, t] > 0:
                values[li, t] = float((vecs[t + 1] - vecs[t]).norm()) / norms[li, t]
    labels = [c.label for c in checkpoints]
    intervals = [f"{a} → {b}" for a, b in zip(labels[:-1], labels[1:])]
    return WeightChange(layers, labels, intervals, values, norms)


# -- models per checkpoint ----------------------------------------------------------
def model_at(checkpoint: Checkpoint, reference: LoadedModel | None = None, *, workspace: Workspace | None = None,
             actor: Actor | None = None) -> LoadedModel:
    """A `LoadedModel` with the checkpoint's weights.

    With ``workspace`` (a page's or a job's call, for ``actor``) every way below goes through
    `Workspace.load_model`, the one role check (editor, `Action.LOAD_MODEL`), before the checkpoint
    is read; without one it is the operator's own call (the command line, a script, the report).

    - An eager ``reference`` model whose weights the checkpoint fits (a wrapper prefix
      stripped if need be): a copy of it gets the weights (same spec).
    - A Hugging Face checkpoint (folder or zip): loaded as a model upload is, built and run in
      its own model process (`explain.loading.loader.load_model`), with the reference's spec.
    - A state dict (``.pth``) of the current Hugging Face ``reference`` model (its keys, with or
      without a ``model.`` / ``module.`` prefix): the reference's config, tokenizer and preprocessor
      with these weights, loaded the same way (`_hf_with_weights`); never built here.
    - A TorchScript checkpoint is loaded as it is; a state dict of the current TorchScript ``reference``
      (its names, with or without a prefix) goes into the reference's archive (`_script_with_weights`).
    - Otherwise the checkpoint is loaded on its own (it must name its architecture).

    Raises:
        IncompatibleInput: the checkpoint's weights do not fit the current model (one line:
            how many differ and one example, never the key dump).
        PermissionDenied: ``actor`` is below editor in ``workspace``.
    """
    if workspace is not None:
        return workspace.load_model(actor, checkpoint.data, loader=lambda _data: _model_at(checkpoint, reference))
    return _model_at(checkpoint, reference)


def _model_at(checkpoint: Checkpoint, reference: LoadedModel | None) -> LoadedModel:
    from explain.loading.loader import load_model

    spec = reference.spec if reference is not None else None
    shapes = None  # the eager reference's weights by name
    if reference is not None and reference.is_eager and isinstance(reference.module, torch.nn.Module):
        expected = reference.module.state_dict()
        shapes = {k: tuple(v.shape) for k, v in expected.items()}
        sd = next((v for v in key_variants(checkpoint.state_dict) if _fits(shapes, v)), None)
        if sd is not None:
            module = copy.deepcopy(reference.module).cpu()
            module.load_state_dict(sd, strict=True)
            module.eval()
            return LoadedModel(
                module=module, format="checkpoint", sha256=reference.sha256, spec=reference.spec,
                name=f"{reference.name} @ {checkpoint.label}", architecture=reference.architecture,
                extra={"epoch": checkpoint.epoch},
            ).to(reference.device)
    if checkpoint.meta.get("format") in (huggingface.FORMAT, "torchscript"):  # a whole model: loaded as it is
        loaded = load_model(checkpoint.data, spec=spec, filename=checkpoint.source)
    elif reference is not None and reference.format == "torchscript" and reference.process is not None:
        data = _script_with_weights(checkpoint, reference)
        loaded = load_model(data, spec=spec, filename=f"{Path(checkpoint.source).stem}.pt")
    elif reference is not None and reference.format == huggingface.FORMAT:
        data = _hf_with_weights(checkpoint, reference)
        loaded = load_model(data, spec=spec, filename=f"{Path(checkpoint.source).stem}.zip")
    else:
        try:
            loaded = load_model(checkpoint.data, spec=spec, filename=checkpoint.source)
        except WeightsRefused:  # weights of another model than the one loaded: say so, with the numbers
            if shapes is None:
                raise
            raise IncompatibleInput(*_not_this_model(checkpoint, reference.name, shapes)) from None
    loaded.name = f"{loaded.name} @ {checkpoint.label}"
    loaded.extra["epoch"] = checkpoint.epoch
    return loaded


def _fits(shapes: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> bool:
    return set(shapes) == set(state) and all(tuple(state[k].shape) == shape for k, shape in shapes.items())


def _not_this_model(checkpoint: Checkpoint, model: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """Why a checkpoint's weights are not the current model's: (reason, hint), one line with counts and an example."""
    best = None
    for variant in key_variants(checkpoint.state_dict):
        missing = [k for k in shapes if k not in variant]
        extra = [k for k in variant if k not in shapes]
        resized = [k for k, shape in shapes.items() if k in variant and tuple(variant[k].shape) != shape]
        if best is None or len(missing) + len(extra) + len(resized) < sum(map(len, best)):
            best = (missing, extra, resized)
    missing, extra, resized = best
    parts = [f"{len(missing)} of the model's {len(shapes)} weights missing" if missing else "",
             f"{len(extra)} weights the model does not have" if extra else "",
             f"{len(resized)} shaped otherwise" if resized else ""]
    example = (missing or extra or resized)[0]
    return (f"{checkpoint.source} does not fit the current model {model} ({', '.join(p for p in parts if p)}; "
            f"e.g. {example[:80]!r}).",
            "Give checkpoints of the model that is loaded (the same architecture and config).")


def _script_with_weights(checkpoint: Checkpoint, reference: LoadedModel) -> bytes:
    """The reference TorchScript model's archive with the checkpoint's weights (a state dict of the same
    module tree, with or without a ``model.`` / ``module.`` prefix): bytes for `load_model`, which opens it
    only in its model process.

    Raises:
        IncompatibleInput: the weights are not the reference model's (one line, with counts).
    """
    data = reference.process.data
    shapes = {k: r.size for k, r in tensor_refs(open_archive(data, "TorchScript")).items()}
    state = next((v for v in key_variants(checkpoint.state_dict) if _fits(shapes, v)), None)
    if state is None:
        raise IncompatibleInput(*_not_this_model(checkpoint, reference.name, shapes))
    return with_weights(data, state, checkpoint.source)


def _hf_with_weights(checkpoint: Checkpoint, reference: LoadedModel) -> bytes:
    """The reference Hugging Face model's files (config, tokenizer, preprocessor) with the checkpoint's
    weights as ``model.safetensors``: zip bytes for `load_model`, which builds it in a model process.

    The weights are matched against the reference's by name and shape first (here, as data), so a
    checkpoint of another model is refused with one line instead of being built.

    Raises:
        IncompatibleInput: the weights are not the reference model's.
    """
    from safetensors.torch import save

    data = reference.process.data if reference.process is not None else None  # what its model process started from
    if not isinstance(data, bytes):
        raise IncompatibleInput(f"{checkpoint.source}: the current Hugging Face model's files are not at hand to "
                                "build the checkpoint in.", "Give the checkpoints as Hugging Face folders or zips.")
    upload = huggingface.read_huggingface(data)
    shapes = upload.shapes  # from the weights' headers
    state = next((v for v in key_variants(checkpoint.state_dict) if _fits(shapes, v)), None)
    if state is None:
        raise IncompatibleInput(*_not_this_model(checkpoint, f"{reference.name} ({reference.architecture})", shapes))
    seen: set[int] = set()
    tensors = {}
    for key, tensor in state.items():  # safetensors refuses tensors that share memory (tied weights)
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    files = {n: b for n, b in upload.files.items() if n not in (*huggingface.WEIGHT_FILES, huggingface.SHARD_INDEX)}
    files["model.safetensors"] = save(tensors)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in sorted(files.items()):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob)  # same weights, same digest
    return buf.getvalue()


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
    report_progress(progress, 1, 1)
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
        report_progress(progress, (i + 1) * UNITS, k * UNITS)
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
    target: np.ndarray | int | None = None, steps: int = 32, progress: ProgressFn | None = None, *,
    workspace: Workspace | None = None, actor: Actor | None = None,
) -> AttributionDrift:
    """`compute_attribution_drift` for checkpoints (models built with `model_at`, through ``workspace``'s
    role check for ``actor`` when given)."""
    models = [model_at(c, reference, workspace=workspace, actor=actor) for c in checkpoints]
    return compute_attribution_drift(
        models, inputs, [c.label for c in checkpoints], [c.epoch for c in checkpoints], target, steps, progress,
    )
