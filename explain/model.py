"""`LoadedModel`: a model Glassbox can explain, whatever file it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from explain.errors import IncompatibleInput
from explain.spec import InputSpec

#: Formats a LoadedModel can come from.
FORMATS = ("safetensors", "state_dict", "checkpoint", "torchscript", "export", "pickle", "huggingface")
#: formats whose module is a plain ``nn.Module`` built from Python source we know.
EAGER_FORMATS = ("safetensors", "state_dict", "checkpoint", "pickle", "huggingface")
#: the half-precision dtypes a cast model's graph may compute in (``extra["input_dtype"]``)
LOW_PRECISION = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def numpy_tensor(array: Any, **kwargs: Any) -> torch.Tensor:
    """``torch.as_tensor`` of an array (``kwargs``: its dtype / device), sharing its memory where torch can: a view
    with negative strides (``x[::-1]``, ``np.flip``), which torch refuses, is copied first."""
    array = np.asarray(array)
    if any(stride < 0 for stride in array.strides):
        array = array.copy()
    return torch.as_tensor(array, **kwargs)


def graph_float_dtype(module: Any) -> str | None:
    """``"float16"`` / ``"bfloat16"`` when every floating parameter and buffer of ``module`` has that
    dtype (a model cast to half precision, whose graph wants its float inputs in it too); else None."""
    try:
        tensors = [*module.parameters(), *module.buffers()]
    except Exception:  # noqa: BLE001 - a graph without parameters to ask
        return None
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 and dtypes <= set(LOW_PRECISION) else None


def cast_float_input(x: torch.Tensor, dtype: str | None) -> torch.Tensor:
    """``x`` as a graph of `graph_float_dtype` ``dtype`` takes it: float inputs cast to it (None: as
    they are). The cast is differentiable: gradients come back to ``x`` in its own float32."""
    return x.to(LOW_PRECISION[dtype]) if dtype in LOW_PRECISION and x.is_floating_point() else x


@dataclass
class LoadedModel:
    """A loaded, eval-mode model with everything needed to explain it.

    Attributes:
        module: the callable model. An ``nn.Module`` (eager), a
            ``torch.jit.ScriptModule`` or the ``nn.Module`` of a
            ``torch.export`` program (``ExportedProgram.module()``).
        format: one of :data:`FORMATS`.
        sha256: hex digest of the bytes the model was loaded from.
        spec: what the model expects.
        device: where ``module`` lives.
        name: display name (file name or sample name).
        architecture: registered architecture name for weight-only formats.
        fixed_batch_size: set when the model only accepts this batch size
            (a ``.pt2`` exported with a static batch); the engine batches in it.
        exported_program: the ``torch.export.ExportedProgram`` for ``export``.
        max_batch_rows: for a user's graph (``torchscript``, ``export``) loaded
            by `explain.loading.loader.load_model`: the largest batch the sandbox ran
            it at (a power of two, or the fixed batch size; see
            `explain.loading.vetting`). Such a model runs only in chunks padded
            to a vetted size (`padded_rows`). None: no cap (eager formats, and
            models a caller built by hand, which the caller vouches for).
        extra: free-form metadata (checkpoint epoch, training history,
            ``sandbox``: the vetting summary of a user's graph, ...).
        process: for a user's graph (``torchscript``, ``export``) loaded by
            `explain.loading.loader.load_model`: the sandboxed
            `explain.loading.model_process.ModelProcess` the graph lives and runs in;
            ``module`` is then its `RemoteModule`, and functions that need the graph
            itself run in that process (`explain.loading.model_process.in_model_process`).
    """

    module: Any
    format: str
    sha256: str
    spec: InputSpec
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "model"
    architecture: str | None = None
    fixed_batch_size: int | None = None
    exported_program: Any = None
    max_batch_rows: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    process: Any = field(default=None, repr=False, compare=False)
    _unflattened: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def is_eager(self) -> bool:
        """True for a plain ``nn.Module`` built from Python source we know: its submodules
        really run, so a hook on any of them fires (not TorchScript, not a ``.pt2`` graph)."""
        return (
            self.format in EAGER_FORMATS
            and self.process is None  # a model in its own process is hooked there, not here
            and isinstance(self.module, nn.Module)
            and not isinstance(self.module, torch.jit.ScriptModule)
        )

    def hook_incompatibility(self, what: str, exported: bool = True) -> str | None:
        """Why hooks on this model's layers are impossible for ``what`` (None when they are possible).

        The one answer to "can we hook into this model's layers?": yes for eager
        models; yes for a ``.pt2`` program with a dynamic batch when ``exported``
        (its module hierarchy is rebuilt with ``torch.export.unflatten``); never
        for TorchScript, nor for a ``.pt2`` exported with a fixed batch size (the
        batches an attribution runs cannot be fed to it).

        Args:
            what: the analysis asking, for the message ("Grad-CAM", "Layer importance").
            exported: False for analyses that need the eager module itself (layer
                names and module types as written in Python), so ``.pt2`` is refused.
        """
        if self.is_eager:
            return None
        if self.format == "export" and exported:
            if (self.exported_program is not None or self.process is not None) and not self.fixed_batch_size:
                return None
            why = "a .pt2 exported with a fixed batch size" if self.fixed_batch_size else "this .pt2 file"
        elif self.format == "export":
            why = ".pt2 files"
        else:
            why = f"{self.format} files"
        return f"{what} needs hooks on the model's layers, which {why} cannot give."

    def hookable_module(self, what: str = "This analysis", exported: bool = True) -> nn.Module:
        """The ``nn.Module`` whose submodules accept hooks: the eager module, or (when
        ``exported``) a ``.pt2`` program unflattened back into its module hierarchy,
        built once and kept on the model's device.

        Raises:
            IncompatibleInput: `hook_incompatibility` says why not, with what to load instead.
        """
        reason = self.hook_incompatibility(what, exported)
        if reason:
            hint = ("Load the weights (safetensors or a state-dict checkpoint), or a .pt2 with a dynamic batch."
                    if exported else "Load the weights (safetensors or a state-dict checkpoint).")
            raise IncompatibleInput(reason, hint)
        if self.is_eager:
            return self.module
        if self.process is not None:  # callers run in the model's process (in_model_process)
            raise IncompatibleInput(f"{what} runs in the model's own process, not in the server.")
        if self._unflattened is None:
            self._unflattened = torch.export.unflatten(self.exported_program)
        return self._unflattened.to(self.device)

    def chunk_limit(self, wanted: int) -> int:
        """The largest chunk (<= ``wanted``) the model may run: the fixed size, or a vetted size."""
        if self.fixed_batch_size:
            return int(self.fixed_batch_size)
        wanted = max(1, int(wanted))
        if not self.max_batch_rows:
            return wanted
        size = min(wanted, int(self.max_batch_rows))
        return 1 << (size.bit_length() - 1)  # vetted sizes are powers of two

    def padded_rows(self, rows: int) -> int | None:
        """Rows a chunk of ``rows`` rows must be padded to (None: run it as it is).

        Raises:
            ValueError: ``rows`` exceeds the fixed or the vetted batch size.
        """
        limit = self.fixed_batch_size or self.max_batch_rows
        if limit and rows > limit:
            raise ValueError(f"chunk of {rows} rows exceeds the model's batch limit {limit}")
        if self.fixed_batch_size:
            return int(self.fixed_batch_size)
        if self.max_batch_rows:
            return min(1 << max(0, rows - 1).bit_length(), int(self.max_batch_rows))  # next vetted size
        return None

    def parameter_count(self) -> int:
        if self.process is not None:
            return int(self.process.info.get("parameters") or 0)
        params = getattr(self.module, "parameters", None)
        if params is None:
            return 0
        return int(sum(p.numel() for p in params()))

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the model in place and return self. ``.pt2`` graphs move too."""
        device = torch.device(device)
        if self.process is not None:  # the graph stays in its process (CPU)
            return self
        if device != self.device:
            self.module.to(device)
            self.device = device
        return self

    def as_tensor(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model-ready batch on the model's device with the spec's dtype."""
        t = numpy_tensor(inputs) if not isinstance(inputs, torch.Tensor) else inputs
        want = torch.int64 if self.spec.dtype.startswith("int") else torch.float32
        expected = tuple(self.spec.input_shape)
        if t.dim() == len(expected):
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) != expected:
            raise IncompatibleInput(
                f"Inputs of shape {tuple(t.shape[1:])} do not fit this model, "
                f"which expects {expected} per sample."
            )
        return t.to(device=self.device, dtype=want)

    @property
    def graph_dtype(self) -> torch.dtype | None:
        """The half-precision dtype this process's graph computes in (``extra["input_dtype"]``, set
        by its model process, `graph_float_dtype`); None for a float32 graph or one in another process."""
        return LOW_PRECISION.get(self.extra.get("input_dtype")) if self.process is None else None

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as this process's graph takes it (`cast_float_input`; a graph in another process: as it is)."""
        return cast_float_input(x, self.extra.get("input_dtype") if self.process is None else None)

    @torch.no_grad()
    def predict_logits(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [N, K] for a batch, in chunks of the fixed or vetted batch sizes."""
        x = self.as_tensor(inputs)  # [N, *input_shape]
        step = self.chunk_limit(256)
        outs = []
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step]  # [n, *input_shape]
            n = chunk.shape[0]
            padded = self.padded_rows(n)
            if padded and n < padded:  # repeat the last row: [padded, *input_shape]
                chunk = torch.cat([chunk, chunk[-1:].expand(padded - n, *chunk.shape[1:])])
            out = self.module(self.cast_input(chunk))
            outs.append(out[:n].float().cpu())
        return torch.cat(outs).numpy()

    def predict_proba(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities [N, K] (softmax of the logits)."""
        logits = torch.from_numpy(self.predict_logits(inputs))
        return torch.softmax(logits, dim=-1).numpy()
