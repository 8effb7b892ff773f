"""Hostile graphs built in the tests (never shipped): ordinary logits, except on one input value.

Vetting runs a graph on random inputs, so each of these passes it; the trigger is a value
the loader's own forward check on zeros, or a later request, sends.
"""
from __future__ import annotations

import io

import torch
from torch import nn

from explain.spec import SPEC_FILENAME, InputSpec

TABULAR = InputSpec(modality="tabular", input_shape=[4], class_names=["a", "b"])


class Gated(nn.Module):
    """Logits of a linear layer, except on the trigger value."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class ZeroBomb(Gated):
    """All zeros (the loader's check): 800 GB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).all()):
            big = torch.ones(200_000_000_000)
            return big[: x.shape[0] * 2].reshape(x.shape[0], 2)
        return self.lin(x)


class ZeroSpin(Gated):
    """All zeros (the loader's check): an endless loop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).all()):
            i = 0
            while i >= 0:
                i = i + 1
        return self.lin(x)


class MagicSpin(Gated):
    """All sevens: an endless loop (a later request, not the loader, triggers it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 7.0).all()):
            i = 0
            while i >= 0:
                i = i + 1
        return self.lin(x)


def scripted(module: nn.Module, spec: InputSpec | None = None) -> bytes:
    """The TorchScript archive of ``module`` (eval mode, seed 0), with ``spec`` embedded when given."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    extra = {SPEC_FILENAME: spec.to_json()} if spec is not None else {}
    torch.jit.save(torch.jit.script(module.eval()), buf, _extra_files=extra)
    return buf.getvalue()
