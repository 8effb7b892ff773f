"""Which torch kernels a model runs with: the one switch for the transformer fast path.

``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` take a fused "fast
path" when no gradient is needed. Glassbox turns it off wherever it runs a
model without gradients: the fused kernels hide the attention weights and the
FLOPs from the structure probes, and in the engine's no-grad passes (f(x),
f(reference)) they are slower on a CPU and give numbers slightly different from
the gradient pass the attributions are computed with.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """Within the block the transformer fast path is off; the previous setting is always restored."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
