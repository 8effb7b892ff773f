"""Helpers shared by the attribution methods: targets, embedding layers, params."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput
from explain.model import LoadedModel
from explain.params import ParamSpec

DEVICE_PARAM = ParamSpec("choice", "auto", choices=("auto", "cpu", "cuda"), help="Where to compute.")
PRECISION_PARAM = ParamSpec(
    "choice", "auto", choices=("auto", "fp32", "tf32", "bf16"),
    help="Numeric precision; auto uses bf16 on a GPU when its measured error is small.",
)
BATCH_PARAM = ParamSpec("int", 0, minimum=0, maximum=65536, help="Rows per forward/backward pass; 0 = fit to memory.")
STEPS_PARAM = ParamSpec("int", 50, minimum=2, maximum=4096, help="Integration steps along the path.")
BASELINE_PARAM = ParamSpec(
    "choice", "zero", choices=("zero", "blurred", "mean", "file"),
    help="Reference input: zeros, a blurred image, the data mean, or an uploaded array.",
)
ARRAY_HELP = "An uploaded array (model-ready, batch first); not a widget."
TOLERANCE_PARAM = ParamSpec(
    "float", 0.0, minimum=0.0, maximum=1.0,
    help="Largest relative completeness error accepted; more steps are used until it holds (0 = off).",
)

#: params every engine-driven method has.
ENGINE_PARAMS: dict[str, ParamSpec] = {
    "device": DEVICE_PARAM,
    "precision": PRECISION_PARAM,
    "batch_size": BATCH_PARAM,
}


def array_param() -> ParamSpec:
    """A parameter holding an uploaded array (kind ``array``, default None)."""
    return ParamSpec("array", None, help=ARRAY_HELP)


def resolve_targets(model: LoadedModel, x: torch.Tensor, target: Any, logits: np.ndarray | None = None) -> np.ndarray:
    """Target class per input: given per input, one for all, or the argmax.

    Args:
        x: model-ready batch [N, ...] on the model's device.
        target: None (predicted class), an int, or N ints.
        logits: the model's logits [N, K] when already computed.

    Returns:
        int64 array [N].
    """
    n = x.shape[0]
    if target is None:
        logits = model.predict_logits(x) if logits is None else logits
        return logits.argmax(axis=1).astype(np.int64)
    t = np.array(target, dtype=np.int64).reshape(-1)  # a copy of its own: a reversed view (x[::-1]) is no tensor
    if t.size == 1:
        t = np.full(n, int(t[0]), dtype=np.int64)
    if t.size != n:
        raise IncompatibleInput(f"Got {t.size} targets for {n} inputs.")
    k = model.spec.num_classes or (logits.shape[1] if logits is not None else None)
    if k and (t.min() < 0 or t.max() >= k):
        raise IncompatibleInput(f"Target class out of range: the model has {k} classes (0..{k - 1}).")
    return t


class override_output:  # noqa: N801 - used as a context manager, reads like a function
    """Context manager: make ``module`` return ``value`` instead of its output.

    Used to run a text model from given embeddings while its other inputs
    (padding masks derived from token ids) stay those of the real input.
    The hook is removed on exit, also after an error.
    """

    def __init__(self, module: nn.Module, value: torch.Tensor):
        self.module, self.value, self.handle = module, value, None

    def __enter__(self) -> override_output:
        self.handle = self.module.register_forward_hook(lambda _m, _i, _o: self.value)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
