"""`EngineMethod`: the shared frame of every method the batching engine runs.

A subclass implements `run` on an `Engine` and a `ModelFunction` and returns
a `Partial` (values shaped like the inputs, optional f(baseline)); this frame
resolves device, precision and targets, computes f(x), completeness, timing
and builds the `Attribution`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explain.attribution import Attribution, compute_completeness_error
from explain.errors import GlassboxError, IncompatibleInput, TooLarge, UsageError, one_line
from explain.inputs.text import special_token_ids
from explain.model import LoadedModel
from explain.output.engine import Engine, add_rows
from explain.output.methods.base import Explainer
from explain.output.methods.common import resolve_targets
from explain.output.model_function import ModelFunction, text_incompatibility
from explain.output.precision import is_out_of_memory


@dataclass
class Partial:
    """What a method computed.

    Attributes:
        values: float [N, ...] shaped like the inputs ([N, L] for text).
        base_value: float [N]: f(baseline) / E[f(background)], None if undefined.
        params: what to record beyond the parameters given, e.g. ``per_input``: the
            steps each input used (`explain.attribution.Attribution`).
        notes: remarks for the user.
    """

    values: np.ndarray
    base_value: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Everything a method's `run` needs."""

    model: LoadedModel
    engine: Engine
    fn: ModelFunction
    x: torch.Tensor  # [N, ...] model-ready, on the engine's device
    inputs: np.ndarray  # [N, ...] as given
    targets: torch.Tensor  # [N] int64 on the device
    #: [N] float64: f(x) at the targets, from the engine's logits pass; None until `outputs_with`
    #: computes it (a method with ``outputs_with_baseline`` given its targets)
    output: np.ndarray | None

    def outputs_with(self, base: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(f(x) [N], f(baseline) [N]) at the targets (float64, fp32, no gradients), from one forward
        pass over the inputs' points and ``base`` [N, ...] (points, like `ModelFunction.start_points`)
        when f(x) is not known yet: the targets are checked against its logits first, as the
        targets' own pass checks them. Else ``base`` alone."""
        rows = torch.arange(len(self.targets), device=base.device)
        if self.output is not None:
            return self.output, self.engine.evaluate(self.fn, base, rows, self.targets)
        n = len(rows)
        logits = self.engine.point_logits(self.fn, torch.cat([self.fn.start_points(), base]),
                                          torch.cat([rows, rows]))  # [2N, K]
        targets = resolve_targets(self.model, self.x, self.targets.cpu().numpy(), logits[:n])
        picked = logits[np.arange(2 * n), np.concatenate([targets, targets])]  # [2N]
        self.output = picked[:n]
        return picked[:n], picked[n:]

    def to_values(self, t: torch.Tensor) -> np.ndarray:
        """Point-space tensor -> values shaped like the inputs (text: sum over D)."""
        if self.fn.space == "embedding":
            t = t.sum(dim=-1)  # [N, L, D] -> [N, L]
        return t.detach().double().cpu().numpy()


class EngineMethod(Explainer):
    """Base class: subclasses set ``completeness`` and implement ``run``."""

    #: True when Σ values should equal f(x) - base_value.
    completeness: bool = False
    #: modalities the method supports.
    modalities: tuple[str, ...] = ("image", "tabular", "text")
    #: ``auto``: text models are attributed at their embeddings; ``input``:
    #: at the inputs themselves (perturbation methods on token ids).
    space: str = "auto"
    #: True when `run` computes f(x) with its baseline's f(b) (`Context.outputs_with`) before any
    #: gradient pass: given targets, no separate f(x) pass runs first (two small passes cost ~10 %
    #: of a small model's attribution on a CPU).
    outputs_with_baseline: bool = False

    def is_compatible(self, model: LoadedModel) -> bool:
        return self.incompatibility(model) is None

    def incompatibility(self, model: LoadedModel) -> str | None:
        if model.modality not in self.modalities:
            return f"{self.name} is defined for {' and '.join(self.modalities)} models, not {model.modality}."
        return text_incompatibility(model) if self.space == "auto" else None

    def run(self, ctx: Context, **params: Any) -> Partial:  # pragma: no cover - abstract
        """The method's values; one with `per_input_params` also takes ``per_input`` (a record's
        per-input values to use as they are) when one is given."""
        raise NotImplementedError

    def _explain(self, model, inputs, target, progress, **params) -> Attribution:
        try:
            return self._attribute(model, inputs, target, progress, **params)
        except GlassboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model (or a method) raised
            if is_out_of_memory(exc):
                raise TooLarge("Out of memory.", "Use fewer inputs or steps, or --device cpu.") from exc
            raise IncompatibleInput(f"{self.name} failed: the model raised {one_line(exc, 200)}") from exc

    def _attribute(self, model, inputs, target, progress, **params) -> Attribution:
        start = time.perf_counter()
        engine = Engine(
            params.pop("device", "auto"), params.pop("precision", "fp32"), params.pop("batch_size", 0), progress
        )
        model, x = engine.prepare(model, inputs)
        if x.shape[0] == 0:
            raise IncompatibleInput("There are no inputs to explain.")
        if target is not None and self.outputs_with_baseline:
            targets, output = resolve_targets(model, x, target), None  # f(x): `Context.outputs_with`
        else:
            logits = engine.predict(model, x)  # [N, K]: targets and f(x) from one pass
            targets = resolve_targets(model, x, target, logits)
            output = logits[np.arange(len(targets)), targets].astype(np.float64)
        t = torch.as_tensor(targets, device=engine.device)
        fn = ModelFunction(model, x, self.space)
        ctx = Context(model, engine, fn, x, np.asarray(inputs), t, output)
        per_input = params.pop("per_input", None)  # a record's values, to reproduce (`Explainer.explain`)
        given = {k: clean_array_param(k, v) for k, v in params.items()}
        partial = self.run(ctx, **given, **({"per_input": per_input} if per_input else {}))
        if ctx.output is None:  # the method did not ask: f(x) as the targets' pass computes it
            ctx.output = engine.predict(model, x)[np.arange(len(targets)), targets].astype(np.float64)
        output = ctx.output
        base = partial.base_value
        if self.completeness and base is not None:
            error = compute_completeness_error(partial.values, output, base)
        else:
            error = None
        recorded = {k: v for k, v in params.items() if not isinstance(v, np.ndarray) and v is not None}
        recorded.update(partial.params)
        return Attribution(
            values=partial.values,
            inputs=np.asarray(inputs),
            target=targets,
            method=self.name,
            params=recorded,
            base_value=base,
            output=output,
            completeness_error=error,
            seconds=time.perf_counter() - start,
            device=engine.device_label,
            precision=engine.precision,
            notes=[*engine.notes, *partial.notes],
        )


def clean_array_param(name: str, value: Any) -> Any:
    """Array parameters arrive as arrays, None, or (from a text widget) 'None'/''."""
    if isinstance(value, str) and name in ("background", "baseline_array"):
        if value.strip() in ("", "None", "none"):
            return None
        raise UsageError(f"Parameter {name!r} must be an array (an uploaded file), not text.")
    return value


def reference_points(ctx: Context, kind: str, baseline_array: Any = None, background: Any = None) -> torch.Tensor:
    """The baseline of each input in point space: [N, ...] (text: [N, L, D] embeddings).

    Text baselines: ``zero`` is the zero embedding vector; ``mean`` the mean
    token embedding (of the background texts when given, else of the inputs,
    padding excluded); ``file`` token ids mapped through the embedding layer.
    """
    from explain.output.baselines import broadcast_reference, make_baseline

    if ctx.fn.space == "input":
        ref = make_baseline(kind, ctx.inputs, ctx.model.modality, baseline_array, background)
        return torch.as_tensor(ref, dtype=torch.float32, device=ctx.engine.device)
    start = ctx.fn.start_points()  # [N, L, D]
    if kind == "zero":
        return torch.zeros_like(start)
    if kind == "mean":
        ids = ctx.x if background is None else ctx.model.as_tensor(background)
        emb = ctx.fn.embed(ids)  # [M, L, D]
        keep = (ids != special_token_ids(ctx.model.spec)[0]).float()[..., None]  # padding left out
        mean = (emb * keep).sum((0, 1)) / keep.sum().clamp_min(1.0)  # [D]
        return mean.expand_as(start).clone()
    if kind == "file":
        if baseline_array is None:
            raise UsageError("The file baseline needs a baseline array (--baseline FILE).")
        ids = broadcast_reference(np.asarray(baseline_array), ctx.inputs)
        return ctx.fn.embed(ctx.model.as_tensor(ids))
    raise UsageError(f"The {kind!r} baseline is not defined for text models; use zero, mean or file.")


def accumulate_gradients(
    ctx: Context,
    samples: int,
    make_point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    contribution: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    squares: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ_s contribution over ``samples`` points per input, on the engine.

    Row r is (input i = r // samples, sample s = r % samples).

    Args:
        make_point: (i [B], s [B]) -> points [B, ...].
        contribution: (grads [B, ...], i [B], s [B]) -> [B, ...] added to input i.
        squares: also accumulate the squared contributions (VarGrad, SmoothGrad²).

    Returns:
        (sum [N, ...], sum of squares [N, ...] or None) in point space.
    """
    start = ctx.fn.start_points()
    device = start.device
    total = torch.zeros(start.shape, dtype=torch.float32, device=device)
    total_sq = torch.zeros_like(total) if squares else None

    def split(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.arange(lo, hi, device=device)
        return r // samples, r % samples

    def make(lo, hi):
        i, s = split(lo, hi)
        return make_point(i, s), i, ctx.targets[i]

    def consume(lo, hi, grads, _values):
        i, s = split(lo, hi)
        c = contribution(grads, i, s)
        add_rows(total, i, c)
        if total_sq is not None:
            add_rows(total_sq, i, c * c)

    n_rows = len(ctx.targets) * samples
    ctx.engine.settle_precision(ctx.fn, make, n_rows)
    ctx.engine.gradients(ctx.fn, n_rows, make, consume)
    return total, total_sq


def seeded_noise(seed: int, index: int, samples: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Standard normal noise [samples, *shape] for input ``index``: the same
    whatever the batch size, because it depends only on (seed, index)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
    return torch.randn((samples, *shape), generator=gen).to(device)


def noise_rows(seed: int, i: torch.Tensor, s: torch.Tensor, samples: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Noise [B, *shape] of rows (input i, sample s), generated once per distinct input."""
    out = torch.empty((len(i), *shape), device=device)
    for idx in torch.unique(i).tolist():
        sel = i == idx
        out[sel] = seeded_noise(seed, idx, samples, shape, device)[s[sel]]
    return out


def noise_points(start: torch.Tensor, std: torch.Tensor, seed: int, samples: int):
    """make_point for start[i] + std[i] * noise(i, s)."""
    shape = (-1,) + (1,) * (start.dim() - 1)

    def make_point(i: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        noise = noise_rows(seed, i, s, samples, tuple(start.shape[1:]), start.device)
        return start[i] + std[i].view(shape) * noise

    return make_point


def input_range(start: torch.Tensor) -> torch.Tensor:
    """max - min of each input's points [N] (the SmoothGrad noise scale)."""
    flat = start.flatten(1)
    return (flat.max(1).values - flat.min(1).values).clamp_min(1e-12)
