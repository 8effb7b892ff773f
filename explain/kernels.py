"""Which torch kernels a model runs with: the one switch for the transformer fast path.

``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` take a fused "fast
path" when no gradient is needed. Glassbox turns it off wherever it runs a
model without gradients: the fused kernels hide the attention weights and the
FLOPs from the structure probes, and in the engine's no-grad passes (f(x),
f(reference)) they are slower on a CPU and give numbers slightly different from
the gradient pass the attributions are computed with.

The switch is one process-wide flag while worker threads and pages run blocks
side by side, so the blocks are counted: the first to enter turns it off, the
last to leave puts back what was there before the first (saving and restoring
per block left it off for good when two threads' blocks overlapped).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.Lock()
_inside = 0  # blocks open in any thread
_before = True  # the setting when the first of them entered


@contextlib.contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """Within the block the transformer fast path is off; the setting from before the outermost open
    block (in any thread) is restored when the last one closes."""
    global _inside, _before
    with _LOCK:
        if _inside == 0:
            _before = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _inside += 1
    try:
        yield
    finally:
        with _LOCK:
            _inside -= 1
            if _inside == 0:
                torch.backends.mha.set_fastpath_enabled(_before)
