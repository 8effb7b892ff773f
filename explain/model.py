"""`LoadedModel`: a model Glassbox can explain, whatever file it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import IncompatibleInput
from .spec import InputSpec

#: Formats a LoadedModel can come from.
FORMATS = ("safetensors", "state_dict", "checkpoint", "torchscript", "export", "pickle")


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
        extra: free-form metadata (checkpoint epoch, training history, ...).
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def is_eager(self) -> bool:
        """True for a plain ``nn.Module`` built from Python source we know."""
        return self.format in ("safetensors", "state_dict", "checkpoint", "pickle")

    def parameter_count(self) -> int:
        params = getattr(self.module, "parameters", None)
        if params is None:
            return 0
        return int(sum(p.numel() for p in params()))

    def to(self, device: str | torch.device) -> "LoadedModel":
        """Move the model in place and return self. ``.pt2`` graphs move too."""
        device = torch.device(device)
        if device != self.device:
            self.module.to(device)
            self.device = device
        return self

    def as_tensor(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model-ready batch on the model's device with the spec's dtype."""
        t = torch.as_tensor(np.asarray(inputs)) if not isinstance(inputs, torch.Tensor) else inputs
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

    @torch.no_grad()
    def predict_logits(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [N, K] for a batch, respecting ``fixed_batch_size``."""
        x = self.as_tensor(inputs)
        step = self.fixed_batch_size or 256
        outs = []
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step]
            n = chunk.shape[0]
            if self.fixed_batch_size and n < self.fixed_batch_size:
                pad = chunk[-1:].expand(self.fixed_batch_size - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            out = self.module(chunk)
            outs.append(out[:n].float().cpu())
        return torch.cat(outs).numpy()

    def predict_proba(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities [N, K] (softmax of the logits)."""
        logits = torch.from_numpy(self.predict_logits(inputs))
        return torch.softmax(logits, dim=-1).numpy()
