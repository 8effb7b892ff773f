"""What the metrics share: feature maps, random attributions, substrates and the
perturbation grid the engine runs.

A *feature* is what a metric removes, adds or ranks: a pixel (all its channels) for
images, a column for tabular models, a token for text. A method's *feature map* is its
values summed over the channels ([N, H, W]) for images, the values themselves otherwise
(the map the Output page draws with "Show: all").
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from explain.digest import digest_array
from explain.errors import UsageError
from explain.model import LoadedModel, numpy_tensor
from explain.output.baselines import make_baseline, text_reference
from explain.output.engine import Engine
from explain.output.fold import folded_model
from explain.output.model_function import ModelFunction

#: what removed features become; ``auto``: a blurred copy for images (RISE), zeros for tabular
#: models (the mean of standardised data), padding for text.
SUBSTRATES = ("auto", "zero", "blurred", "mean")


def feature_map(model: LoadedModel, values: np.ndarray) -> np.ndarray:
    """[N, *features] float64: images summed over channels ([N, C, H, W] -> [N, H, W])."""
    values = np.asarray(values, dtype=np.float64)
    return values.sum(axis=1) if model.modality == "image" else values


def feature_shape(model: LoadedModel, values: np.ndarray) -> tuple[int, ...]:
    """The shape of one input's features ([N, *this] is `feature_map`'s): (H, W) pixels for images,
    else the input's own."""
    return tuple(values.shape[2:]) if model.modality == "image" else tuple(values.shape[1:])


def input_seed(x: np.ndarray, seed: int) -> int:
    """A seed that depends on one input's content and ``seed`` only (not on its batch)."""
    return (int(digest_array(np.asarray(x))[:12], 16) + 1_000_003 * int(seed)) % (2**63)


def random_like(values: np.ndarray, inputs: np.ndarray, seed: int = 0) -> np.ndarray:
    """The random attribution: each input's values randomly permuted (same magnitudes,
    random places), seeded by the input's content, so it is the same in any batch."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for i in range(len(values)):
        rng = np.random.default_rng(input_seed(inputs[i], seed))
        flat = values[i].reshape(-1)
        out[i] = flat[rng.permutation(flat.size)].reshape(values.shape[1:])
    return out


def substrate(model: LoadedModel, inputs: np.ndarray, kind: str) -> np.ndarray:
    """What removed features become: [N, ...] like ``inputs``. Text: padding tokens
    (the first token kept), whatever ``kind``; images / tabular: zeros, a blurred copy
    (images) or the inputs' mean; ``auto`` blurred for images, zeros for tabular models."""
    if kind not in SUBSTRATES:
        raise UsageError(f"Unknown substrate {kind!r}. Use one of {', '.join(SUBSTRATES)}.")
    if model.modality == "text":  # token ids: removed tokens become padding
        return text_reference(np.asarray(inputs), model.spec, "pad", keep_first="input")
    if kind == "auto":
        kind = "blurred" if model.modality == "image" else "zero"
    return make_baseline(kind, inputs, model.modality)


def expand_mask(model: LoadedModel, mask: torch.Tensor) -> torch.Tensor:
    """Feature mask [B, *features] -> broadcastable to model inputs ([B, 1, H, W] for images)."""
    return mask[:, None] if model.modality == "image" else mask


class Grid:
    """The model's target scores at perturbed inputs, evaluated by the engine in chunks.

    Args:
        model: the model (moved to the engine's device).
        inputs: model-ready [N, ...]. targets: int [N].
        device, batch_size: the engine's (``auto`` / ``cpu`` / ``cuda``; 0 fits to memory).
        progress: the engine's progress callback (raise ``Cancelled`` in it to stop).
    """

    def __init__(self, model: LoadedModel, inputs: np.ndarray, targets: np.ndarray,
                 device: str = "auto", batch_size: int = 0, progress=None):
        self.engine = Engine(device, "fp32", batch_size, progress)
        self.model, self.x = self.engine.prepare(model, inputs)  # x: [N, ...] on the device
        # forward passes only: batch norms folded into their convolutions where that is exact
        self.fn = ModelFunction(folded_model(self.model, self.x[:2]), self.x, space="input")
        self.targets = numpy_tensor(targets, dtype=torch.int64, device=self.engine.device)
        self.n = self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """An array shaped like the inputs, on the device with the inputs' dtype."""
        return numpy_tensor(array, device=self.device).to(self.x.dtype)

    def scores(self, n_rows: int, make_row: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
               probability: bool = False) -> np.ndarray:
        """Target scores [n_rows] (float64) of rows built by ``make_row(rows [B]) -> (points [B, ...],
        owner [B])``: one batched grid, chunked, with out-of-memory back-off and progress."""

        def make(lo: int, hi: int):
            rows = torch.arange(lo, hi, device=self.device)
            points, owner = make_row(rows)
            return points, owner, self.targets[owner]

        row_bytes = int(self.x[:1].numel() * 4)
        # a folded copy serves forward-only grids alone, and what its forward passes set stays in it:
        # they need no autograd records (inference mode, ~3 % faster); the model itself may keep
        # what it makes for a later gradient pass
        with torch.inference_mode(self.fn.model is not self.model):
            return self.engine.evaluate_rows(self.fn, n_rows, make, row_bytes, report=True, probability=probability)

    def outputs(self, probability: bool = False) -> np.ndarray:
        """Target scores [N] at the inputs themselves."""
        return self.scores(self.n, lambda rows: (self.x[rows], rows), probability)


def ranks(maps: np.ndarray) -> np.ndarray:
    """int [N, P]: each feature's place when sorted by its value, largest first (ties: first
    position first), from feature maps [N, *features]."""
    flat = maps.reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row of [N, P] arrays (average ranks for ties); NaN
    where a row is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    return pearson(ra, rb)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of [N, P] arrays; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(1) / np.where(denom > 0, denom, 1.0), np.nan)
