"""Self-attention's packed q/k/v projection handed out by ``unbind`` in the engine's gradient passes.

``nn.MultiheadAttention`` projects q, k and v with one matrix product [L, B, 3E], reorders it into
one contiguous [3, L, B, E] tensor and hands out ``proj[0], proj[1], proj[2]``
(`torch.nn.functional._in_projection_packed`). Each index's backward builds a zero-filled
[3, L, B, E] gradient and copies its slice into it, autograd adds the three, and the sum is copied
back into the [L, B, 3, E] layout of the matrix product: three fills, four copies and two additions
of the whole projection per attention layer, on a CPU the largest single cost of a small encoder's
gradient pass (the attribution benchmark's B3 at 1 thread: ~16 % in the fills alone). Here the
product is split by ``unbind`` along its q/k/v axis and each part copied contiguous (the same bytes
as torch's one reordering copy); the backward stacks the three gradients straight into the
[L, B, 3, E] layout: one copy. The forward values are the same numbers and so are the gradients
(each element of torch's summed gradient was its own part's gradient plus zeros): attributions do
not change, bit for bit.

The replacement is installed once, on the first `unbound_qkv` block, and acts only on the thread
inside such a block: every other call (another thread's model, a pass outside the engine, cross
attention, a later torch calling it otherwise) goes to torch's own function, and TorchScript
compiles torch's own function wherever a script reaches it.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch.nn.functional as F  # noqa: N812 - torch's own name for it

_LOCK = threading.Lock()
_original = None  # torch's function, once replaced


class _Depth(threading.local):
    blocks = 0  # open `unbound_qkv` blocks on this thread


_DEPTH = _Depth()


def _packed(*args, **kwargs):
    if _DEPTH.blocks and not kwargs and len(args) in (4, 5) and args[0] is args[1] is args[2]:
        q, w = args[0], args[3]  # self-attention: [L, B, E], [3E, E]
        b = args[4] if len(args) == 5 else None
        e = q.size(-1)
        proj = F.linear(q, w, b).unflatten(-1, (3, e))  # [L, B, 3, E]
        return [t.contiguous() for t in proj.unbind(-2)]  # 3 x [L, B, E]
    return _original(*args, **kwargs)


# TorchScript compiles what this returns in its place: a model scripted in this process (the samples'
# TorchScript files, a test's) holds torch's own function, never this one (which it cannot compile)
_packed.__prepare_scriptable__ = lambda: _original


def _install() -> bool:
    """Put `_packed` in torch's place (once); False where this torch has no such function."""
    global _original
    with _LOCK:
        if _original is None:
            found = getattr(F, "_in_projection_packed", None)
            if not callable(found):
                return False
            _original = found
            F._in_projection_packed = _packed
    return True


@contextlib.contextmanager
def unbound_qkv() -> Iterator[None]:
    """Within the block this thread's self-attention layers hand out q, k, v by ``unbind``."""
    if not _install():
        yield
        return
    _DEPTH.blocks += 1
    try:
        yield
    finally:
        _DEPTH.blocks -= 1

