"""Devices and numeric precision for attribution runs.

``fp32`` is exact to float32; ``tf32`` lets CUDA matmuls/convolutions use
TensorFloat-32 (no effect on a CPU); ``bf16`` runs the forward pass under
``torch.autocast`` (gradients with respect to float32 inputs stay float32).
``auto`` measures what a reduced precision would cost on a few rows and only
keeps it when the error is small.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from explain.errors import IncompatibleInput, UsageError

PRECISIONS = ("fp32", "tf32", "bf16")
#: relative L2 error of gradients above which ``auto`` falls back to fp32.
AUTO_MAX_ERROR = 2e-2


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is refused."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IncompatibleInput("No CUDA device is available here.", "Use --device cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"Unknown device {name!r}. Use auto, cpu or cuda.")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """``cpu`` / ``cuda:0``: the device as a result reports it."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward passes in ``precision`` on ``device``.

    Global TF32 switches are restored on exit, also after an error.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}. Use one of auto, {', '.join(PRECISIONS)}.")
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    flag = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = flag
    torch.backends.cudnn.allow_tf32 = flag
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: tf32 means fp32 off CUDA."""
    return "fp32" if precision == "tf32" and device.type != "cuda" else precision


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (0 when both are zero)."""
    approx, exact = approx.double(), exact.double()
    denom = exact.norm().item()
    diff = (approx - exact).norm().item()
    return 0.0 if denom == 0 and diff == 0 else diff / max(denom, 1e-30)


def choose_precision(
    requested: str,
    device: torch.device,
    probe: Callable[[str], torch.Tensor],
    max_error: float = AUTO_MAX_ERROR,
    reduced: tuple[str, ...] | None = None,
) -> tuple[str, list[str]]:
    """Pick the precision for a run; ``auto`` measures before it trusts bf16/tf32.

    Args:
        requested: ``auto`` or one of :data:`PRECISIONS`.
        probe: computes the same few gradient rows in a given precision.
        max_error: largest accepted relative error of the probe gradients.
        reduced: candidates ``auto`` tries, fastest first (default: bf16 then
            tf32 on CUDA; none on a CPU, where bf16 is rarely faster).

    Returns:
        (precision, notes) — notes say what ``auto`` measured and decided.
    """
    if requested != "auto":
        return effective_precision(requested, device), []
    if reduced is None:
        reduced = ("bf16", "tf32") if device.type == "cuda" else ()
    if not reduced:
        return "fp32", []
    exact = probe("fp32")
    tried = []
    for candidate in reduced:
        err = relative_error(probe(candidate), exact)
        tried.append(f"{candidate} {err:.1e}")
        if err <= max_error:
            return candidate, [f"auto precision: {candidate} (gradient error {err:.1e} on probe rows)."]
    return "fp32", [
        f"auto precision fell back to fp32: reduced precision error too large ({', '.join(tried)}; "
        f"limit {max_error:.0e})."
    ]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory and for a CPU allocator failure."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
