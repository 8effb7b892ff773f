"""Integrated gradients (Sundararajan et al. 2017) on the batching engine.

attr_i = (x_i - b_i) * ∫_0^1 ∂f(b + a (x - b)) / ∂x_i da, approximated with
Gauss-Legendre quadrature exactly as ``captum.attr.IntegratedGradients``
does (same nodes and weights, so the results agree with Captum's). Text
models are attributed at the output of their embedding layer and summed over
the embedding dimension.
"""
from __future__ import annotations

import functools
import time
from dataclasses import replace

import numpy as np
import torch

from explain.attribution import compute_completeness_error
from explain.output.engine import add_rows
from explain.output.methods.base import register
from explain.output.methods.common import BASELINE_PARAM, ENGINE_PARAMS, STEPS_PARAM, TOLERANCE_PARAM, array_param
from explain.output.methods.engine_method import Context, EngineMethod, Partial, reference_points

#: the most steps the tolerance loop goes to.
MAX_STEPS = 4096


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Path positions and weights [steps] of Captum's approximation ``method`` (new tensors each call)."""
    alphas, weights = _quadrature(int(steps), method)
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def _quadrature(steps: int, method: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Captum's nodes and weights, computed once per (steps, method): its Gauss-Legendre nodes
    cost ~0.8 ms a call (numpy's ``leggauss``), 3 % of a small model's whole attribution."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    weights_fn, alphas_fn = approximation_parameters(method)
    return tuple(float(a) for a in alphas_fn(steps)), tuple(float(w) for w in weights_fn(steps))


def integrate_path(ctx: Context, start: torch.Tensor, base: torch.Tensor, targets: torch.Tensor, steps: int,
                   rows: torch.Tensor | None = None, report: bool = True) -> torch.Tensor:
    """Integrated gradients in point space for the inputs ``rows`` (default all).

    Args:
        start: points of the inputs [N, ...]; base: their baselines [N, ...].
        targets: [N] target classes.
        rows: the input indices to compute (a subset when refining).

    Returns:
        [len(rows), ...] attributions (x - b) * Σ_k w_k ∇f(b + a_k (x - b)).
    """
    rows = torch.arange(start.shape[0], device=start.device) if rows is None else rows
    alphas, weights = quadrature(steps)
    alphas = alphas.to(start.device, torch.float32)
    weights = weights.to(start.device, torch.float32)
    bases = base[rows]  # [n, ...]
    diff = start[rows] - bases  # [n, ...]
    acc = torch.zeros_like(diff, dtype=torch.float32)
    shape = (-1,) + (1,) * (start.dim() - 1)

    def split(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.arange(lo, hi, device=start.device)
        return r // steps, r % steps  # input-major: a chunk walks along one path

    def make(lo, hi):
        i, _ = split(lo, hi)
        nhwc = ctx.fn.layout.channels_last and diff.dim() == 4  # the layout the model runs in (it may refuse it)
        points = torch.empty((hi - lo, *diff.shape[1:]), dtype=diff.dtype, device=diff.device,
                             memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        if lo % steps == 0 and hi % steps == 0:  # whole paths: one broadcast for all of them
            a, b = lo // steps, hi // steps
            torch.add(bases[a:b, None], alphas.view(1, -1, *shape[1:]) * diff[a:b, None],
                      out=points.view(b - a, steps, *diff.shape[1:]))  # [n, steps, ...]
            return points, rows[i], targets[rows[i]]
        for a in range(lo - lo % steps, hi, steps):  # one input's run of path points: broadcast, no gathers
            first, last, n = max(a, lo), min(a + steps, hi), a // steps
            torch.add(bases[n], alphas[first - a:last - a].view(shape) * diff[n],
                      out=points[first - lo:last - lo])  # b + a_k (x - b)
        return points, rows[i], targets[rows[i]]

    def consume(lo, hi, grads, _values):
        i, k = split(lo, hi)
        add_rows(acc, i, grads, weights[k])

    n_rows = len(rows) * steps
    ctx.engine.settle_precision(ctx.fn, make, n_rows)
    ctx.engine.gradients(ctx.fn, n_rows, make, consume, report=report)
    return acc * diff


def step_budget(steps: int, most: int = MAX_STEPS) -> tuple[int, float]:
    """The completeness tolerance's budget for ``steps`` asked, the one for every IG that raises steps (the
    classifier methods here, a generation's tokens in `explain.generation.attribution`): the most steps an
    input may be raised to (``steps`` x `explain.config.ig_step_budget`, at most ``most``) and the seconds
    raising may take (`explain.config.ig_step_seconds`)."""
    from explain.config import ig_step_budget, ig_step_seconds

    return min(most, int(steps * ig_step_budget())), ig_step_seconds()


def step_raising_record(requested: int, limit: int, seconds: float, used: np.ndarray, stopped_by: str | None,
                        error: np.ndarray) -> dict:
    """What the tolerance loop did, as a run records it (``params["step_raising"]``, said in one line by
    `explain.attribution.step_raising_text`): ``used`` [N] the steps each input (or token) used, ``error`` [N]
    the completeness errors left, ``stopped_by`` the budget that stopped it (``steps`` | ``seconds`` | None)."""
    used = np.asarray(used)
    return {"requested": int(requested), "limit": int(limit), "seconds_limit": float(seconds),
            "most_used": int(used.max()), "raised": int(np.sum(used > requested)), "stopped_by": stopped_by,
            "max_error": float(np.nanmax(error))}


def integrated_gradients_with_tolerance(ctx: Context, base: torch.Tensor, steps: int, tolerance: float,
                                        per_input: dict[str, list[int]] | None = None) -> Partial:
    """IG for all inputs; inputs above ``tolerance`` are redone with doubled steps, within the
    operator's budget (`explain.config.ig_step_budget`: at most that multiple of ``steps``, and
    `ig_step_seconds` of raising), and the steps each input used are recorded as
    ``per_input["steps"]`` when some input used other than ``steps``, what the loop did as
    ``step_raising`` (`explain.attribution.step_raising_text` says it in one line). Given a record's ``per_input``, each
    input is computed with its recorded steps instead (`integrated_gradients_as_recorded`) and the
    tolerance raises nothing. The raised passes report progress (and so are cancel points) too."""
    if per_input and "steps" in per_input:
        return integrated_gradients_as_recorded(ctx, base, per_input["steps"])
    start = ctx.fn.start_points()
    all_rows = torch.arange(len(ctx.targets), device=start.device)
    output, base_value = ctx.outputs_with(base)  # the same f(x) the Attribution's completeness error uses
    attr = integrate_path(ctx, start, base, ctx.targets, steps)
    notes: list[str] = []
    if tolerance <= 0:
        return Partial(ctx.to_values(attr), base_value, {"steps": steps})
    used = np.full(len(all_rows), steps)
    error = compute_completeness_error(ctx.to_values(attr), output, base_value)
    limit, seconds = step_budget(steps)
    current, stopped_by, began = steps, None, time.perf_counter()
    progress, done = ctx.engine.progress, len(all_rows) * steps  # work so far, in path points
    try:
        while np.any(error > tolerance):
            if current * 2 > limit:
                stopped_by = "steps"
                break
            if time.perf_counter() - began >= seconds:
                stopped_by = "seconds"
                break
            current *= 2
            bad = torch.as_tensor(np.flatnonzero(error > tolerance), device=start.device)
            if progress is not None:  # this round's chunks on the bar, after the work already done
                todo = len(bad) * current
                ctx.engine.progress = lambda d, _t, before=done, todo=todo: progress(before + d, before + todo)
            attr[bad] = integrate_path(ctx, start, base, ctx.targets, current, rows=bad)
            done += len(bad) * current
            used[bad.cpu().numpy()] = current
            error = compute_completeness_error(ctx.to_values(attr), output, base_value)
    finally:
        ctx.engine.progress = progress
    if current > steps:
        notes.append(f"raised steps from {steps} to {current} for {int(np.sum(used > steps))} input(s) "
                     f"to meet completeness tolerance {tolerance:g}.")
    still = np.flatnonzero(error > tolerance)
    if len(still):
        notes.append(f"input(s) {still.tolist()} still exceed tolerance {tolerance:g} at {current} steps: "
                     f"they need more than {current} steps.")
    recorded: dict = {"per_input": {"steps": [int(s) for s in used]}} if np.any(used != steps) else {}
    if current > steps or stopped_by:
        recorded["step_raising"] = step_raising_record(steps, limit, seconds, used, stopped_by, error)
    return Partial(ctx.to_values(attr), base_value, recorded, notes)


def integrated_gradients_as_recorded(ctx: Context, base: torch.Tensor, steps_used: list[int]) -> Partial:
    """IG with each input's own number of steps (a record's ``per_input["steps"]``): the inputs
    that used the same steps are integrated together, on the whole batch's baselines, exactly as
    the tolerance loop computed them; one progress bar over all of them."""
    start = ctx.fn.start_points()
    used = np.asarray(steps_used, dtype=np.int64)
    groups = [(int(s), np.flatnonzero(used == s)) for s in np.unique(used)]
    total = int(sum(s * len(rows) for s, rows in groups))
    attr = torch.zeros_like(start, dtype=torch.float32)
    progress, done = ctx.engine.progress, 0
    _, base_value = ctx.outputs_with(base)
    try:
        for s, rows in groups:
            if progress is not None:  # this group's chunks on the one bar of all groups
                ctx.engine.progress = lambda d, _t, before=done: progress(before + d, total)
            index = torch.as_tensor(rows, device=start.device)
            attr[index] = integrate_path(ctx, start, base, ctx.targets, s, rows=index)
            done += s * len(rows)
    finally:
        ctx.engine.progress = progress
    by_steps = "; ".join(f"{s} for input(s) {rows.tolist()}" for s, rows in groups)
    notes = [f"steps as recorded per input: {by_steps} (tolerance not applied)."] if len(groups) > 1 else []
    return Partial(ctx.to_values(attr), base_value, {"per_input": {"steps": used.tolist()}}, notes)


@register
class IntegratedGradients(EngineMethod):
    shares_model = True  # the engine's forward and backward passes only
    name = "integrated_gradients"
    family = "gradient"
    title = "Integrated gradients"
    completeness = True
    outputs_with_baseline = True
    per_input_params = ("steps",)  # the tolerance raises them per input
    params = {
        "steps": STEPS_PARAM,
        "baseline": BASELINE_PARAM,
        # 1%: the samples' text model needs ~100 steps for some inputs; those alone are redone.
        "tolerance": replace(TOLERANCE_PARAM, default=0.01),
        **ENGINE_PARAMS,
        "baseline_array": array_param(),
        "background": array_param(),
    }

    def run(self, ctx: Context, steps, baseline, tolerance, baseline_array, background, per_input=None) -> Partial:
        base = reference_points(ctx, baseline, baseline_array, background)
        return integrated_gradients_with_tolerance(ctx, base, steps, tolerance, per_input)
