"""The batching engine: evaluates a method's (input x step x background) grid.

A gradient method describes its grid as rows: row r is a point (an input, a
path point, a noisy copy, ...) whose target logit is differentiated. The
engine runs the rows in the largest chunks that fit, backs off on
out-of-memory (halving the chunk and retrying it, which never changes the
result), pads chunks for models exported with a fixed batch size, reports
progress and honours cancellation from the progress callback.

A user's graph (TorchScript, ``.pt2``) loaded by `explain.loading.loader.load_model`
carries ``max_batch_rows``, the largest batch the sandbox ran it at
(`explain.loading.vetting`): its chunks never exceed that size and are padded to
one of the vetted sizes (powers of two), so the engine runs such a graph
only at batch sizes that already ran in the sandbox.

The function it differentiates is a `explain.output.model_function.ModelFunction`: f(points) in the
space a method's attributions live in (model inputs, or token embeddings for text models).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from explain.errors import TooLarge
from explain.kernels import no_mha_fastpath
from explain.model import LoadedModel
from explain.output.model_function import Layout, LogitsFn, ModelFunction
from explain.output.packed_attention import unbound_qkv
from explain.output.precision import (
    choose_precision,
    device_label,
    is_out_of_memory,
    precision_context,
    resolve_device,
)
from explain.progress import ProgressFn

#: rows evaluated per chunk on a CPU when nothing else is known: ~8 MiB of points.
CPU_CHUNK_BYTES = 8 << 20
MAX_CHUNK_ROWS = 1024
#: inputs per forward-only chunk and CPU thread, sized for the caches: on the Q1 ResNet at 64² (1 thread),
#: 2 MiB chunks ran 1.45x faster per row than 8 MiB ones, 1 MiB ones 1.15x slower than 2 MiB, and
#: 32 MiB ones ~1.6x slower than 8 MiB; at 2 threads on the loaded 2-core machine 4 MiB chunks ran
#: ~2.5x faster than 2 MiB (each op's parallel region waits for a descheduled thread: fewer, larger).
CPU_FORWARD_BYTES = 2 << 20
#: share of free GPU memory the engine plans to use.
GPU_MEMORY_SHARE = 0.7
PROBE_ROWS = 2

#: make(start, stop) -> (points [B, ...], owner [B] input index, target [B]).
MakeFn = Callable[[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
#: consume(start, stop, grads [B, ...], target_logits [B]).
ConsumeFn = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def add_rows(acc: torch.Tensor, owner: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor | None = None) -> None:
    """acc[owner[r]] += weights[r] * rows[r] (weights default 1); rows of one owner are summed first.

    Args:
        acc: [N, ...] accumulator. owner: [R] row -> index into acc.
        rows: [R, ...] values. weights: optional [R] per-row factors.

    Deterministic, and faster than ``index_add_`` on a CPU for the few owners
    a chunk holds. Chunks whose owners come in contiguous runs (every engine
    grid is owner-major) are reduced slice by slice, weighted rows as one
    matrix-vector product, without a weighted copy of the chunk; runs of one
    length (a chunk of whole paths) as one batched product for all owners.
    """
    owners, counts = torch.unique_consecutive(owner, return_counts=True)
    if owners.numel() == torch.unique(owners).numel():  # contiguous runs
        n = int(counts[0])
        if owners.numel() > 1 and n * owners.numel() == rows.shape[0] and bool((counts == n).all()):
            parts = rows.reshape(owners.numel(), n, -1).to(acc.dtype)  # [owners, n, F]
            summed = (parts.sum(1) if weights is None else
                      torch.bmm(weights.to(acc.dtype).view(-1, 1, n), parts).squeeze(1))  # [owners, F]
            acc.index_add_(0, owners, summed.view(-1, *acc.shape[1:]))
            return
        start = 0
        for idx, n in zip(owners.tolist(), counts.tolist()):
            part = rows.narrow(0, start, n)  # [n, ...]
            if weights is None:
                acc[idx] += part.sum(0)
            else:
                acc[idx] += (weights.narrow(0, start, n).to(acc.dtype) @ part.reshape(n, -1).to(acc.dtype)).view(acc.shape[1:])
            start += n
        return
    if weights is not None:
        rows = rows * weights.to(acc.dtype).view((-1,) + (1,) * (rows.dim() - 1))
    for idx in torch.unique(owner).tolist():
        sel = owner == idx
        acc[idx] += rows[sel].sum(0)


class Engine:
    """Runs attribution grids in large chunks on one device and precision.

    Args:
        device: ``auto`` | ``cpu`` | ``cuda`` (or a torch.device).
        precision: ``auto`` | ``fp32`` | ``tf32`` | ``bf16``; ``auto`` is
            settled by `settle_precision`.
        batch_size: rows per chunk; 0 chooses from free memory (CUDA) or a
            default (CPU).
        progress: progress(done, total) after each chunk of the main grid;
            raising ``Cancelled`` in it stops the run.
    """

    def __init__(self, device="auto", precision: str = "fp32", batch_size: int = 0, progress: ProgressFn | None = None):
        self.device = resolve_device(device)
        self.requested_precision = precision
        self.precision = "fp32" if precision == "auto" else precision
        self.batch_size = int(batch_size or 0)
        self.progress = progress
        self.notes: list[str] = []
        self.chunk_sizes: list[int] = []
        self._learned_size: int | None = None
        self.row_limit: int | None = None  # the prepared model's vetted batch size

    @property
    def device_label(self) -> str:
        return device_label(self.device)

    def prepare(self, model: LoadedModel, inputs: np.ndarray) -> tuple[LoadedModel, torch.Tensor]:
        """Move ``model`` to the engine's device; the model-ready inputs there."""
        self.row_limit = model.max_batch_rows
        if model.device != self.device:
            model.to(self.device)
        return model, model.as_tensor(inputs)

    # -- chunking ---------------------------------------------------------
    def map_chunks(
        self,
        n_rows: int,
        work: Callable[[int, int], None],
        row_bytes: int,
        fixed: int | None = None,
        report: bool = True,
        limit: int | None = None,
    ) -> None:
        """Call ``work(start, stop)`` over [0, n_rows) in chunks, largest first.

        On out-of-memory the chunk is halved and retried; ``work`` must have no
        effect when it raises. With ``fixed`` every chunk has that many rows
        (``work`` pads). With ``limit`` (a model's vetted ``max_batch_rows``;
        default: the prepared model's) every chunk is a power of two no larger
        than it, or the remainder (``work`` pads it with ``model.padded_rows``).
        """
        limit = limit or self.row_limit
        size = _cap(self._first_size(n_rows, row_bytes, fixed), limit, fixed)
        probing = fixed is None and not self.batch_size and self.device.type == "cuda" and self._learned_size is None
        start = 0
        while start < n_rows:
            stop = min(n_rows, start + size)
            try:
                if probing:
                    torch.cuda.synchronize(self.device)
                    torch.cuda.reset_peak_memory_stats(self.device)
                    before = torch.cuda.memory_allocated(self.device)
                work(start, stop)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(exc):
                    raise
                if fixed or size == 1:
                    raise TooLarge(
                        "Out of memory even for the smallest batch.", "Use fewer inputs, steps or --device cpu."
                    ) from None
                size = max(1, size // 2)
                self._learned_size = size
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.notes.append(f"out of memory: batch size lowered to {size}.")
                continue
            self.chunk_sizes.append(stop - start)
            if probing:
                size = _cap(self._size_from_probe(before, stop - start), limit, fixed)
                probing = False
            start = stop
            if report and self.progress is not None:
                self.progress(start, n_rows)

    def _first_size(self, n_rows: int, row_bytes: int, fixed: int | None) -> int:
        if fixed:
            return int(fixed)
        if self.batch_size:
            return max(1, min(self.batch_size, n_rows))
        if self._learned_size:
            return max(1, min(self._learned_size, n_rows))
        if self.device.type == "cuda":
            return max(1, min(PROBE_ROWS, n_rows))
        return max(1, min(n_rows, MAX_CHUNK_ROWS, CPU_CHUNK_BYTES // max(row_bytes, 1)))

    def _size_from_probe(self, before: int, rows: int) -> int:
        """Rows per chunk from the peak memory of a probe chunk and free memory."""
        peak = torch.cuda.max_memory_allocated(self.device) - before
        per_row = max(peak / max(rows, 1), 1.0)
        free, _ = torch.cuda.mem_get_info(self.device)
        reserved_idle = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        size = int(GPU_MEMORY_SHARE * (free + reserved_idle) / per_row)
        self._learned_size = max(1, min(size, 16 * MAX_CHUNK_ROWS))
        return self._learned_size

    # -- gradients ----------------------------------------------------------
    def gradients(self, fn: ModelFunction, n_rows: int, make: MakeFn, consume: ConsumeFn, report: bool = True) -> None:
        """Differentiate each row's target logit with respect to its point.

        ``make`` builds a chunk's points, owners and targets; ``consume``
        receives the gradients and target logits of the real (unpadded) rows.
        """
        fixed = self.model_fixed_batch(fn)
        row_bytes = int(fn.start_points()[:1].numel() * 4)
        with fn.session() as logits:

            def work(start: int, stop: int) -> None:
                points, owner, target = make(start, stop)
                padded = fn.padded_rows(stop - start)
                grads, values = self._grad_chunk(logits, points, owner, target, padded)
                consume(start, stop, grads, values)

            self.map_chunks(n_rows, work, row_bytes, fixed, report, limit=fn.row_limit)

    def _grad_chunk(self, logits: LogitsFn, points, owner, target, padded: int | None,
                    precision: str | None = None):
        b = points.shape[0]
        points, owner, target = pad_rows(padded, points, owner, target)  # [padded or b, ...]
        points = points.detach().float().requires_grad_(True)
        with torch.enable_grad(), precision_context(precision or self.precision, self.device), unbound_qkv():
            out = logits(points, owner)  # [B, K]
            chosen = out.gather(1, target[:, None]).squeeze(1).float()  # [B]
        (grads,) = torch.autograd.grad(chosen.sum(), points)
        return grads[:b].detach(), chosen[:b].detach()

    def evaluate(self, fn: ModelFunction, points: torch.Tensor, owner: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Target logits [B] (float64) at given points, fp32, no gradients."""
        return self.evaluate_rows(
            fn, points.shape[0], lambda a, b: (points[a:b], owner[a:b], target[a:b]), int(points[:1].numel() * 4)
        )

    def evaluate_rows(self, fn: ModelFunction, n_rows: int, make: MakeFn, row_bytes: int, report: bool = False,
                      probability: bool = False) -> np.ndarray:
        """Target logits [n_rows] (float64) of rows built by ``make``; fp32, no gradients.

        With ``probability`` the target's softmax probability instead of its logit.
        """
        fixed = self.model_fixed_batch(fn)
        out = torch.empty(n_rows, dtype=torch.float64)
        with torch.no_grad(), no_mha_fastpath(), fn.session() as logits:

            def work(start: int, stop: int) -> None:
                p, o, t = pad_rows(fn.padded_rows(stop - start), *make(start, stop))
                scores = logits(p, o)  # [B, K]
                if probability:
                    scores = torch.softmax(scores.float(), dim=1)
                vals = scores.gather(1, t[:, None]).squeeze(1)
                out[start:stop] = vals[: stop - start].double().cpu()

            self.map_chunks(n_rows, work, self.forward_row_bytes(row_bytes), fixed, report=report,
                            limit=fn.row_limit)
        return out.numpy()

    def point_logits(self, fn: ModelFunction, points: torch.Tensor, owner: torch.Tensor) -> np.ndarray:
        """Logits [B, K] (float64) at given points [B, ...] of inputs ``owner`` [B]; fp32, no gradients."""
        fixed = self.model_fixed_batch(fn)
        outs: list[torch.Tensor] = []
        with torch.no_grad(), no_mha_fastpath(), fn.session() as logits:

            def work(start: int, stop: int) -> None:
                p, o = pad_rows(fn.padded_rows(stop - start), points[start:stop], owner[start:stop])
                outs.append(logits(p, o)[: stop - start].double().cpu())  # [b, K]

            self.map_chunks(points.shape[0], work, self.forward_row_bytes(int(points[:1].numel() * 4)), fixed,
                            report=False, limit=fn.row_limit)
        return torch.cat(outs).numpy()

    def forward_row_bytes(self, row_bytes: int) -> int:
        """The bytes a forward-only row counts for when sizing chunks. On a GPU a forward pass
        keeps no activations for a backward: 4x the rows of a gradient chunk fit. On a CPU the
        chunk is sized for its caches, not its memory: `CPU_FORWARD_BYTES` of inputs per thread."""
        if self.device.type == "cuda":
            return max(1, row_bytes // 4)
        return max(1, row_bytes * CPU_CHUNK_BYTES // (CPU_FORWARD_BYTES * torch.get_num_threads()))

    def predict(self, model: LoadedModel, x: torch.Tensor) -> np.ndarray:
        """Logits [N, K] (float64) of model-ready inputs, fp32, chunked and padded."""
        fixed = model.fixed_batch_size
        outs: list[torch.Tensor] = []
        layout = Layout.for_model(model)
        with torch.no_grad(), no_mha_fastpath():

            def work(start: int, stop: int) -> None:
                (chunk,) = pad_rows(model.padded_rows(stop - start), x[start:stop])  # [padded, ...]
                outs.append(layout.call(model.module, chunk)[: stop - start].double().cpu())

            self.map_chunks(x.shape[0], work, self.forward_row_bytes(int(x[:1].numel() * 4)), fixed,
                            report=False, limit=model.max_batch_rows)
        return torch.cat(outs).numpy()

    def settle_precision(self, fn: ModelFunction, make: MakeFn, n_rows: int) -> str:
        """Resolve ``auto`` by comparing a few rows' gradients with fp32."""
        if self.requested_precision != "auto":
            self.precision = choose_precision(self.requested_precision, self.device, lambda p: None)[0]
            return self.precision
        rows = min(n_rows, 4, fn.fixed_batch or fn.row_limit or 4)
        padded = fn.padded_rows(rows)
        with fn.session() as logits:
            points, owner, target = make(0, rows)

            def probe(precision: str) -> torch.Tensor:
                return self._grad_chunk(logits, points, owner, target, padded, precision)[0]

            self.precision, notes = choose_precision("auto", self.device, probe)
        self.notes.extend(notes)
        return self.precision

    @staticmethod
    def model_fixed_batch(fn: ModelFunction) -> int | None:
        return fn.fixed_batch


def _cap(size: int, limit: int | None, fixed: int | None) -> int:
    """``size`` lowered to a power of two no larger than ``limit`` (a vetted model's chunk)."""
    if fixed or not limit or size <= 0:
        return size
    size = min(size, int(limit))
    return 1 << (size.bit_length() - 1)


def pad_rows(fixed: int | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pad each tensor's first dim to ``fixed`` rows by repeating its last row."""
    if not fixed or tensors[0].shape[0] == fixed:
        return tensors
    n = tensors[0].shape[0]
    if n > fixed:
        raise ValueError(f"chunk of {n} rows exceeds the fixed batch size {fixed}")
    return tuple(torch.cat([t, t[-1:].expand(fixed - n, *t.shape[1:])]) for t in tensors)
