"""A model as f(points), the function the engine differentiates (`explain.output.engine`).

`ModelFunction` turns a `LoadedModel` into f(points): model inputs for image and tabular models, the
output of the token-embedding layer for text models (eager models through a forward hook,
``torch.export`` graphs through an interpreter that substitutes the ``aten.embedding`` lookup of the
token ids, `graph_embedding`); `Layout` runs a module channels-last where that helps.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from explain.errors import IncompatibleInput
from explain.loading.export_lm import EmbeddingLookup, embedding_lookup
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.precision import is_out_of_memory

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ModelFunction:
    """A model as f(points) in the space its attributions live in.

    Args:
        model: the loaded model (already on the engine's device).
        inputs: model-ready batch [N, ...] on the model's device.
        space: ``auto`` (embeddings for text, else inputs) or ``input``
            (points are the model inputs as they are, token ids included:
            for perturbation methods that need no gradient).

    Attributes:
        space: ``input`` (points are model inputs) or ``embedding`` (points
            are token embeddings [N, L, D]; row r still uses the token ids of
            its input for masks).
    """

    def __init__(self, model: LoadedModel, inputs: torch.Tensor, space: str = "auto"):
        self.model = model
        self.inputs = inputs
        self.space = "embedding" if model.modality == "text" and space == "auto" else "input"
        self._layer: nn.Module | None = None
        self._node = None
        self._weight: torch.Tensor | None = None
        if self.space == "embedding":
            self._locate_embedding()
        self._start = self.embed(inputs)  # [N, ...] points of the inputs themselves
        self.row_mapped = model.fixed_batch_size == 1 and model.format == "export"
        self._checked = False
        self.layout = Layout.for_model(model)

    # -- batching -------------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        """The batch size every chunk must have (None: any; a row-mapped program takes any)."""
        return None if self.row_mapped else self.model.fixed_batch_size

    @property
    def row_limit(self) -> int | None:
        """Most rows per chunk: the model's vetted size (a row-mapped program: the configured one)."""
        if self.row_mapped and self.model.max_batch_rows:
            from explain.config import vetted_batch

            return vetted_batch()
        return self.model.max_batch_rows

    def padded_rows(self, rows: int) -> int | None:
        """Rows a chunk of ``rows`` must be padded to (None: as it is); see `LoadedModel.padded_rows`."""
        if self.row_mapped:
            limit = self.row_limit
            return None if not limit else min(1 << max(0, rows - 1).bit_length(), limit)
        return self.model.padded_rows(rows)

    def _locate_embedding(self) -> None:
        found = find_embedding(self.model)
        if found is not None:
            self._layer = found[1]
            return
        lookup = graph_embedding(self.model)
        if lookup is None:
            raise IncompatibleInput(text_incompatibility(self.model))
        self._node, self._weight = lookup.node, lookup.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, L, D] of ids [N, L] (input space: the inputs as they are)."""
        if self.space == "input":
            return ids if not torch.is_floating_point(ids) else ids.float()
        with torch.no_grad():
            if self._layer is not None:  # the layer's function, bypassing hooks
                layer = self._layer
                return nn.functional.embedding(ids, layer.weight, layer.padding_idx).float()
            return nn.functional.embedding(ids, self._weight).float()

    def start_points(self) -> torch.Tensor:
        """The inputs as points: [N, ...] floats (not to be modified)."""
        return self._start

    @contextlib.contextmanager
    def session(self) -> Iterator[LogitsFn]:
        """Yield logits(points [B, ...], owner [B]) -> [B, K]; hooks removed on exit.

        A ``.pt2`` exported for a fixed batch of 1 is run on whole chunks at
        once through ``torch.func.vmap`` over its one-row call (its graph keeps
        the batch of 1 in its shapes, so it cannot be re-run at another batch
        size). The first session checks the mapped outputs against row-by-row
        ones and falls back to rows when they differ or vmap fails.
        """
        with self._session() as logits:
            if not self.row_mapped:
                yield logits
                return

            def one_row(point: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:  # [...], [] -> [K]
                return logits(point[None], owner[None])[0]

            mapped = torch.func.vmap(one_row)  # ([B, ...], [B]) -> [B, K]

            def run_mapped(points: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
                # the math attention kernel has batching rules; the fused CPU one would run row by row
                with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
                    return mapped(points, owner)

            if not self._checked:
                self._checked = True
                self.row_mapped = self._mapping_agrees(run_mapped, logits)
                if not self.row_mapped:
                    yield logits
                    return
            yield run_mapped

    def _mapping_agrees(self, mapped: LogitsFn, rows: LogitsFn) -> bool:
        points = self._start[:2]
        owner = torch.arange(points.shape[0], device=points.device)
        try:
            with torch.no_grad():
                got = mapped(points, owner)
                want = torch.cat([rows(points[i : i + 1], owner[i : i + 1]) for i in range(points.shape[0])])
        except Exception:  # noqa: BLE001 - an op without a batching rule: run row by row
            return False
        return got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-5, rtol=1e-4))

    @contextlib.contextmanager
    def _session(self) -> Iterator[LogitsFn]:
        module = self.model.module
        if self.space == "input":
            yield lambda points, owner: self.layout.call(module, points)
            return
        if self._layer is None:
            interpreter = _EmbeddingInterpreter(module, self._node)

            def run_graph(points, owner):
                interpreter.override = points
                out = interpreter.run(self.inputs[owner])
                return out[0] if isinstance(out, (tuple, list)) else out

            try:
                yield run_graph
            finally:
                interpreter.override = None
            return
        # the points of this session's passes now running, by the thread running each: the hook acts in
        # those passes only. Another thread's job may run the same model object meanwhile
        # (`explain.service.model_locks`: text models are held shared), a batch job's pause between two
        # chunks may run an interactive job on this thread, and a chunk may run on another thread than
        # the one that opened the session (its pass is still this session's)
        holder: dict[int, torch.Tensor] = {}

        def replace(_module, _inp, out):
            points = holder.get(threading.get_ident())
            if points is None:
                return None  # another session's forward pass: its output as it is
            if tuple(out.shape) != tuple(points.shape):
                raise IncompatibleInput(
                    f"The embedding layer returned {tuple(out.shape)}, expected {tuple(points.shape)}."
                )
            return points

        handle = self._layer.register_forward_hook(replace)
        try:

            def run_eager(points, owner):
                thread = threading.get_ident()
                holder[thread] = points
                try:
                    return module(self.inputs[owner])
                finally:
                    del holder[thread]

            yield run_eager
        finally:
            handle.remove()
            holder.clear()


class Layout:
    """The memory layout an image model's batches run in on a CPU.

    A convolutional network on a CPU runs its forward and backward passes ~1.5x faster
    on channels-last (NHWC) batches: oneDNN's convolutions work in that layout, so a
    contiguous (NCHW) batch is reordered before and after every convolution. A layout is
    no part of a tensor's values (every op gives the same numbers up to float rounding;
    gradients come back in the points' own layout), so eager models with 2-d
    convolutions get their 4-d float batches channels-last. A model that cannot take
    them (``.view`` on a feature map raises) is run as it is from then on, in every later
    call too (`_REFUSED`): each attribution and prediction makes its own Layout, and would
    otherwise pay a failed forward pass on its first chunk every time.

    A graph cast to half precision (`LoadedModel.graph_dtype`) gets its float batches in its dtype
    and gives its logits back in float32, so gradients (attributions) stay float32.
    """

    def __init__(self, channels_last: bool, cast: torch.dtype | None = None):
        self.channels_last = channels_last
        self.refused = False  # the model raised on a channels-last batch: every batch NCHW from then on
        self.cast = cast

    @classmethod
    def for_model(cls, model: LoadedModel) -> Layout:
        module = model.module
        wanted = (
            model.device.type == "cpu"
            and model.is_eager
            and len(model.spec.input_shape) == 3
            and not model.spec.dtype.startswith("int")
            and isinstance(module, nn.Module)
            and module not in _REFUSED
            and any(isinstance(m, nn.Conv2d) for m in module.modules())
        )
        return cls(wanted, model.graph_dtype)

    def call(self, module: Callable, batch: torch.Tensor) -> torch.Tensor:
        """``module(batch)``, channels-last where it helps (a half-precision graph: cast in, float32 out)."""
        if self.cast is not None and torch.is_floating_point(batch):
            return self._call(module, batch.to(self.cast)).float()
        return self._call(module, batch)

    def _call(self, module: Callable, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.dim() == 4 and torch.is_floating_point(batch):
            try:
                return module(batch.contiguous(memory_format=torch.channels_last))
            except RuntimeError as exc:  # e.g. ``.view`` of a channels-last feature map
                if is_out_of_memory(exc):
                    raise
                self.channels_last = False
                self.refused = True
                if isinstance(module, nn.Module):
                    _REFUSED.add(module)
        if self.refused and batch.dim() == 4:  # a batch made channels-last by its caller too (before the refusal)
            batch = nchw(batch)
        return module(batch)


def nchw(batch: torch.Tensor) -> torch.Tensor:
    """``batch`` [N, C, H, W] with NCHW strides. ``contiguous()`` keeps a channels-last batch of one channel as
    it is (it counts as contiguous either way), and a convolution's output follows its input's strides: a model
    that refused channels-last would get its channels-last feature map again."""
    n, c, h, w = batch.shape
    return batch if batch.stride() == (c * h * w, h * w, w, 1) else batch.clone(memory_format=torch.contiguous_format)


#: eager modules whose forward refused a channels-last batch: run as they are (`Layout.for_model`)
_REFUSED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class _EmbeddingInterpreter(torch.fx.Interpreter):
    """Runs an exported graph with the ``aten.embedding`` node's value replaced."""

    def __init__(self, module, node):
        super().__init__(module)
        self.node = node
        self.override: torch.Tensor | None = None

    def run_node(self, n):
        if n is self.node and self.override is not None:
            return self.override
        return super().run_node(n)


def graph_embedding(model: LoadedModel) -> EmbeddingLookup | None:
    """The token-embedding lookup of a ``torch.export`` graph (`explain.loading.export_lm.embedding_lookup`,
    the one finder the ``.pt2`` causal LM path uses too), or None."""
    if model.format != "export" or not isinstance(getattr(model.module, "graph", None), torch.fx.Graph):
        return None
    return embedding_lookup(model.module)


@in_model_process
def text_incompatibility(model: LoadedModel) -> str | None:
    """Why gradient methods cannot reach this text model's embeddings (None if they can)."""
    if model.modality != "text":
        return None
    if find_embedding(model) is not None or graph_embedding(model) is not None:
        return None
    where = "a TorchScript file" if model.format == "torchscript" else f"this {model.format} model"
    return (
        f"Gradient methods need the token-embedding layer, which cannot be reached in {where}; "
        "use feature_ablation (token ablation), or load the weights (safetensors / .pt2)."
    )


def find_embedding(model: LoadedModel) -> tuple[str, nn.Embedding] | None:
    """The token-embedding layer of an eager text model, by module type.

    A module that names its input embeddings (``get_input_embeddings``, as
    Hugging Face models do: ``word_embeddings``) is taken at its word; else, with
    several ``nn.Embedding`` modules, the one with the most rows (the vocabulary,
    not positions or segments).
    """
    if not model.is_eager:
        return None
    named = getattr(model.module, "get_input_embeddings", None)
    chosen = named() if callable(named) else None
    if isinstance(chosen, nn.Embedding):
        for n, m in model.module.named_modules():
            if m is chosen:
                return n, m
    found = [(n, m) for n, m in model.module.named_modules() if isinstance(m, nn.Embedding)]
    if not found:
        return None
    return max(found, key=lambda nm: nm[1].num_embeddings)
