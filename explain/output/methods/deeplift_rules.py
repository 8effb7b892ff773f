"""DeepLift (rescale rule) over (input, reference) pairs, for any model format.

`deeplift_rescale_attributions` is the shared entry point of the rule-based
methods (``shap_deep``, and ``deeplift`` / ``deeplift_shap`` if they want it):
the model is captured as a graph (`explain.output.aten_graph`), the rules of
SHAP's DeepExplainer are applied on it (`explain.output.aten_rules`), and the
(input x reference) grid runs in memory-bounded chunks. Every chunk's outputs
are checked against the model's own, so a wrong capture is refused, never
explained.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from explain.errors import GlassboxError, IncompatibleInput, TooLarge, UsageError, one_line
from explain.model import LoadedModel
from explain.output.aten_graph import FALLBACK_METHOD, GRAPH_CACHE, CapturedGraph, captured_graph, first_tensor
from explain.output.aten_rules import RulePlan, op_name, plan_rules
from explain.output.engine import Engine
from explain.output.pair_interpreter import PairInterpreter
from explain.output.precision import is_out_of_memory
from explain.progress import ProgressFn, report_progress


@dataclass
class RescaleResult:
    """Rescale-rule DeepLift attributions averaged over references.

    Attributes:
        values: float64 [N, ...] shaped like the inputs; [N, L] for token ids
            (attributed at the embedding output, summed over its last dim).
        output: float64 [N]: f(x) for the target.
        base_value: float64 [N]: mean over the input's references of f(r).
        notes: how the graph was captured, ops without an exact rule.
    """

    values: np.ndarray
    output: np.ndarray
    base_value: np.ndarray
    notes: list[str] = field(default_factory=list)


def deeplift_rescale_attributions(
    model: LoadedModel,
    inputs: np.ndarray | torch.Tensor,
    baselines: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    grid: bool = True,
    batch_size: int = 128,
    progress: ProgressFn | None = None,
    flavour: str = "shap",
) -> RescaleResult:
    """DeepLift (rescale rule, SHAP DeepExplainer's rules) for any model format.

    Args:
        model: the loaded model (eager, TorchScript or ``.pt2``).
        inputs: model-ready batch [N, ...].
        baselines: references [B, ...]. With ``grid`` every input is paired
            with every reference and values are averaged over them (SHAP
            DeepExplainer / DeepLiftShap); without, B must be N (row i is
            input i's reference) or 1 (shared), as in DeepLift.
        target: int [N], the output column explained per input.
        batch_size: (input, reference) pairs per forward/backward; results do
            not depend on it. A model with a fixed batch size uses that.
        progress: called with (pairs done, pairs total) after each chunk; an
            exception raised there (``Cancelled``) stops the run.
        flavour: ``"shap"`` (SHAP DeepExplainer's softmax-head / max-pool
            rules and eps) or ``"captum"`` (Captum DeepLift's); see
            `explain.output.aten_rules.RULE_FLAVOURS`.

    Returns:
        `RescaleResult`; ``values.sum() == output - base_value`` per input up
        to float error when every nonlinearity has a rule (see ``notes``).

    Raises:
        IncompatibleInput: the model cannot be captured as a graph, or the
            graph does not reproduce the model's outputs.
    """
    x = model.as_tensor(inputs)  # [N, ...]
    refs = model.as_tensor(baselines)  # [B, ...]
    n, b = x.shape[0], refs.shape[0]
    if not grid and b not in (1, n):
        raise UsageError(f"Paired baselines need 1 or {n} rows, got {b}.")
    logits_x, logits_r = inputs_and_reference_logits(model, x, refs)
    job = _Job(
        x, refs, torch.as_tensor(np.asarray(target), dtype=torch.long, device=x.device).reshape(n),
        torch.as_tensor(logits_x), torch.as_tensor(logits_r), b if grid else 1, grid, flavour,
    )
    step = model.fixed_batch_size or int(batch_size)
    example = _pad(x[job.pairs(0, min(step, job.total))[0]], step if model.fixed_batch_size else None)
    try:
        with captured_graph(model, example) as captured:
            sums, plan = _run_job(job, captured, step, progress)
    except _Disagreement:
        if not captured.cached:
            raise
        GRAPH_CACHE.forget(model)  # weights changed since the graph was captured: capture again
        with captured_graph(model, example, reuse=False) as captured:
            sums, plan = _run_job(job, captured, step, progress)
    notes = [f"graph captured by {captured.how}", *captured.notes]
    if plan.unruled:
        notes.append(
            "no exact DeepLift rule for " + ", ".join(plan.unruled)
            + ": the gradient passes through them, so the values do not add up exactly to f(x) - E[f(b)]"
        )
    values, out_sum, base_sum = (v / job.per_input for v in sums)
    return RescaleResult(values.numpy(), out_sum.numpy(), base_sum.numpy(), notes)


@dataclass
class _Job:
    """The (input, reference) pairs to run: pair p = (p // B, p % B) on the grid."""

    x: torch.Tensor  # [N, ...]
    refs: torch.Tensor  # [B, ...]
    target: torch.Tensor  # [N]
    logits_x: torch.Tensor  # [N, K]
    logits_r: torch.Tensor  # [B, K]
    per_input: int
    grid: bool
    flavour: str

    @property
    def total(self) -> int:
        return self.x.shape[0] * self.per_input

    def pairs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input rows and reference rows of pairs ``start..stop``."""
        p = torch.arange(start, stop)
        if self.grid:
            return p // self.per_input, p % self.per_input
        return p, (p if self.refs.shape[0] > 1 else torch.zeros_like(p))


def _run_job(
    job: _Job, captured: CapturedGraph, step: int, progress: ProgressFn | None
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], RulePlan]:
    """Sums over each input's pairs of values, f(x) and f(r) (float64, CPU)."""
    n = job.x.shape[0]
    step = captured.fixed_batch or step
    plan = plan_rules(captured.module.graph, not torch.is_floating_point(job.x), job.flavour)
    channels_last = _channels_last(captured.module, job.x)
    values = None
    out_sum, base_sum = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    start = 0
    while start < job.total:
        i_idx, b_idx = job.pairs(start, min(start + step, job.total))
        ts = job.target[i_idx]
        try:
            pair_values, fx_out, fr_out = _run_chunk(
                captured.module, plan, job.x[i_idx], job.refs[b_idx], ts, captured.fixed_batch, channels_last
            )
        except GlassboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - out of memory: halve the chunk and retry it
            if channels_last and not is_out_of_memory(exc):
                channels_last = False  # an op of this graph refused the layout: the chunk again as it is
                continue
            if not is_out_of_memory(exc):
                raise IncompatibleInput(
                    f"The graph captured by {captured.how} could not be run backwards "
                    f"({type(exc).__name__}: {str(exc).strip()[:160]}).",
                    f"Use {FALLBACK_METHOD} instead.",
                ) from exc
            if captured.fixed_batch or step == 1:
                raise TooLarge(f"Out of memory with {step} (input, background) pairs per pass.") from None
            step //= 2
            continue
        _check_agreement(fx_out, job.logits_x[i_idx], fr_out, job.logits_r[b_idx], captured.how)
        if values is None:
            values = torch.zeros((n, *pair_values.shape[1:]), dtype=torch.float64)
        values.index_add_(0, i_idx, pair_values.double().cpu())
        out_sum.index_add_(0, i_idx, fx_out.gather(1, ts[:, None]).squeeze(1).double().cpu())
        base_sum.index_add_(0, i_idx, fr_out.gather(1, ts[:, None]).squeeze(1).double().cpu())
        start += len(i_idx)
        report_progress(progress, start, job.total)
    return (values, out_sum, base_sum), plan


def inputs_and_reference_logits(model: LoadedModel, x: torch.Tensor, refs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The model's own logits of the inputs [N, K] and of the references [B, K], from one pass
    over both where they fit one chunk (two small passes cost a third of a small grid's time on
    a CPU); a model that raises or gives NaN is refused as `model_logits` refuses it, naming
    the inputs or the background."""
    n = x.shape[0]
    if model.fixed_batch_size or model.max_batch_rows or x.shape[1:] != refs.shape[1:]:
        return model_logits(model, x, "inputs"), model_logits(model, refs, "background")
    try:
        both = own_logits(model, torch.cat([x, refs])).reshape(n + refs.shape[0], -1)
    except GlassboxError:
        raise
    except Exception:  # noqa: BLE001 - the user's model raised: say on which rows
        both = None
    if both is None or not np.isfinite(both).all():
        return model_logits(model, x, "inputs"), model_logits(model, refs, "background")
    return both[:n], both[n:]


def own_logits(model: LoadedModel, rows: np.ndarray | torch.Tensor) -> np.ndarray:
    """The model's logits [N, K] (float32) through the engine's forward pass: chunked and padded as
    `LoadedModel.predict_logits`, channels-last where that helps (`explain.output.model_function.Layout`)."""
    return Engine(model.device).predict(model, model.as_tensor(rows)).astype(np.float32)


def model_logits(model: LoadedModel, rows: np.ndarray | torch.Tensor, what: str = "inputs") -> np.ndarray:
    """The model's own logits [N, K]; a model that raises or gives NaN is refused clearly."""
    try:
        logits = own_logits(model, rows)
    except GlassboxError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model raised
        raise IncompatibleInput(f"The model raised {type(exc).__name__} on the {what}: {one_line(exc, 200, typed=False)}") from None
    logits = np.asarray(logits).reshape(len(rows), -1)
    if not np.isfinite(logits).all():
        hint = "For text, keep at least one non-padding token in every row." if what == "background" else None
        raise IncompatibleInput(f"The model's output on the {what} is not finite (NaN or inf).", hint)
    return logits


def _pad(rows: torch.Tensor, size: int | None) -> torch.Tensor:
    """Rows padded with copies of the last row up to ``size`` (None: as they are)."""
    if size is None or rows.shape[0] >= size:
        return rows
    return torch.cat([rows, rows[-1:].expand(size - rows.shape[0], *rows.shape[1:])])


def _channels_last(module: fx.GraphModule, x: torch.Tensor) -> bool:
    """Run the pairs of a CPU image graph with 2-d convolutions channels-last (NHWC): oneDNN's
    convolutions work in that layout and run their forward and backward passes ~1.5-2x faster
    than on NCHW batches, which they reorder before and after every convolution; the values are
    the same up to float rounding (as `explain.output.model_function.Layout` does for eager models)."""
    return (x.dim() == 4 and torch.is_floating_point(x) and x.device.type == "cpu"
            and any(op_name(n) in ("conv2d", "convolution") for n in module.graph.nodes))


def _run_chunk(
    module: fx.GraphModule,
    plan: RulePlan,
    xs: torch.Tensor,
    rs: torch.Tensor,
    ts: torch.Tensor,
    fixed: int | None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attributions of S (input, reference) pairs: values [S, ...], f(x) [S, K], f(r) [S, K]."""
    s = xs.shape[0]
    xs, rs, ts = _pad(xs, fixed), _pad(rs, fixed), _pad(ts, fixed)
    if channels_last:
        xs, rs = (t.contiguous(memory_format=torch.channels_last) for t in (xs, rs))
    pairs = PairInterpreter(module, plan, s)
    with torch.enable_grad():
        fx_ = first_tensor(pairs.run(xs, rs)).reshape(xs.shape[0], -1)  # [S, K]
        fr = first_tensor(pairs.ref_output).detach().reshape(xs.shape[0], -1)  # [S, K]
        leaves = [pairs.attribution_leaf, *(g.leaf for g in pairs.gates)]  # the input (or embedding), id masks
        selected = fx_.gather(1, ts[:, None]).sum()
        grads = torch.autograd.grad(selected, leaves, allow_unused=True)
    leaf = pairs.attribution_leaf
    grad = torch.zeros_like(leaf) if grads[0] is None else grads[0]
    pair_values = grad * (leaf.detach() - pairs.attribution_ref)  # [S, ...]
    if plan.attribution_node.op != "placeholder":
        pair_values = pair_values.flatten(2).sum(-1)  # [S, L]: one number per token
        for gate, g in zip(pairs.gates, grads[1:]):
            if g is not None:
                pair_values = pair_values + _per_token(g * gate.delta, pair_values.shape[1])
    return pair_values[:s].detach(), fx_[:s].detach(), fr[:s]


def _per_token(contribution: torch.Tensor, length: int) -> torch.Tensor:
    """A mask's contributions [S, ..., L] summed onto its last (key token) dimension -> [S, L]."""
    if contribution.dim() < 2 or contribution.shape[-1] != length:
        return torch.zeros(contribution.shape[0], length, dtype=contribution.dtype, device=contribution.device)
    return contribution.reshape(contribution.shape[0], -1, length).sum(1)


class _Disagreement(IncompatibleInput):
    """The captured graph's outputs differ from the model's."""


def _check_agreement(fx_out: torch.Tensor, want_x: torch.Tensor, fr_out: torch.Tensor, want_r: torch.Tensor, how: str) -> None:
    """Refuse when the captured graph does not reproduce the model's logits."""
    for got, want in ((fx_out, want_x), (fr_out, want_r)):
        got, want = got.float().cpu(), want.float()
        gap = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        if not gap <= 1e-3 * (1.0 + float(want.abs().max())):
            raise _Disagreement(
                f"The graph captured by {how} does not reproduce this model's outputs (difference {gap:.3g}).",
                f"Use {FALLBACK_METHOD} instead.",
            )
