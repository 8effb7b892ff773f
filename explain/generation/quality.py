"""How faithful a generation's token attributions are: the registry's token metrics on a causal LM.

Generated token t (its context: the P + t positions before it, ``n`` below) is judged like one
input of a classifier whose target is that token, with its probability p(token | context):

- ``comprehensiveness`` / ``sufficiency``: ERASER's AOPC as ferret computes it
  (`explain.output.metrics.faithfulness.comprehensiveness.rationale_sets`): the top 10%, ..., 100%
  of the context by attribution (positive scores only) replaced by the reference token, or every
  other position replaced; the mean drop of the probability over the valid thresholds;
- ``deletion`` / ``insertion``: the context's tokens replaced (put back) in attribution order,
  largest first, in ``steps`` steps; the area under the probability over the fraction replaced
  (`explain.output.metrics.faithfulness.deletion.auc`).

The reference token is the one integrated gradients' ``pad`` / ``unk`` baseline embeds
(`explain.generation.causal_lm.special_ids`), put in place of the token (positions do not move).
Each metric is also scored for a random attribution, the token's values permuted over its
context (seeded by the context, `explain.output.metrics.common.random_like`). The probabilities of
every perturbed context are computed in one call to the model's process (`target_probabilities`).
Results are the registry's `MetricResult`: one value per generated token.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from explain.errors import IncompatibleInput, UsageError
from explain.generation.causal_lm import causal_lm, check_lengths, device_of, keeps_logits, special_ids
from explain.generation.result import GenerationAttribution
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.engine import Engine
from explain.output.metrics import MetricResult, get_metric
from explain.output.metrics.common import random_like, ranks
from explain.output.metrics.faithfulness.comprehensiveness import TENTHS, aopc, rationale_sets
from explain.output.metrics.faithfulness.deletion import auc, curve_fractions

#: The metrics a generation is judged by, in the order the page lists them.
TOKEN_METRICS = ("comprehensiveness", "sufficiency", "deletion", "insertion")
#: The tokens a removed position becomes.
REPLACEMENTS = ("pad", "unk")
DEFAULT_STEPS = 10

#: score(contexts [n_t] per token, masks bool [R_t, n_t] per token (True: replaced), targets) -> [R_t] each
ScoreFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[int]], list[np.ndarray]]


@in_model_process
def target_probabilities(model: LoadedModel, contexts: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                         targets: Sequence[int], replace: str = "pad", device: str = "auto") -> list[np.ndarray]:
    """p(targets[t] | contexts[t] with the positions of each row of masks[t] replaced): float64 [R_t] per t.

    Args:
        contexts: int [n_t] token ids per target. masks: bool [R_t, n_t], True where the
            `REPLACEMENTS` token ``replace`` goes. targets: one token id per context.
    """
    if replace not in REPLACEMENTS:
        raise UsageError(f"Unknown replacement {replace!r}; use one of {', '.join(REPLACEMENTS)}.")
    lm = causal_lm(model)
    check_lengths(lm, contexts, [0] * len(contexts))
    token = special_ids(lm, model)[replace]
    if token is None:
        raise IncompatibleInput(f"This model's tokenizer has no {replace} token.", "Use the pad replacement.")
    engine = Engine(device=device, precision="fp32")
    model.to(engine.device)
    with torch.no_grad():
        return [_probabilities(lm, engine, context, mask, int(target), int(token))
                for context, mask, target in zip(contexts, masks, targets)]


def _probabilities(lm: torch.nn.Module, engine: Engine, context: np.ndarray, mask: np.ndarray, target: int,
                   token: int) -> np.ndarray:
    """float64 [R]: p(target | context with ``token`` where each row of ``mask`` [R, n] is True)."""
    dev = device_of(lm)
    ids = torch.as_tensor(np.asarray(context, dtype=np.int64), device=dev)  # [n]
    rows = torch.as_tensor(np.asarray(mask, dtype=bool), device=dev)  # [R, n]
    probs = torch.empty(len(rows), dtype=torch.float64)
    keep = {"logits_to_keep": 1} if keeps_logits(lm) else {}

    def work(lo: int, hi: int) -> None:
        batch = torch.where(rows[lo:hi], token, ids[None])  # [B, n]
        logits = lm(input_ids=batch, use_cache=False, **keep).logits[:, -1]  # [B, V]
        probs[lo:hi] = torch.softmax(logits.float(), dim=-1)[:, target].double().cpu()

    width = int(getattr(lm.config, "hidden_size", 0) or lm.get_input_embeddings().weight.shape[1])  # (a .pt2 may have no lookup)
    layers = int(getattr(lm.config, "num_hidden_layers", 0) or getattr(lm.config, "n_layer", 0) or 12)
    engine.map_chunks(len(rows), work, len(ids) * width * 4 * (4 + 4 * layers), report=False)  # activations
    return probs.numpy()


def generation_quality(model: LoadedModel, attribution: GenerationAttribution,
                       metrics: Sequence[str] = TOKEN_METRICS, replace: str = "pad", steps: int = DEFAULT_STEPS,
                       seed: int = 0, device: str = "auto") -> dict[str, MetricResult]:
    """Each of ``metrics`` (`TOKEN_METRICS`) of ``attribution``, per generated token, with its random level."""

    def score(contexts, masks, targets):
        return target_probabilities(model, contexts, masks, targets, replace=replace, device=device)

    return token_quality(attribution, score, metrics, steps, seed, params={"replace": replace})


def token_quality(attribution: GenerationAttribution, score: ScoreFn, metrics: Sequence[str] = TOKEN_METRICS,
                  steps: int = DEFAULT_STEPS, seed: int = 0, params: dict | None = None) -> dict[str, MetricResult]:
    """`generation_quality` with the model's probabilities given by ``score`` (a test's hand-built model).

    Raises:
        UsageError: an unknown metric, one that does not judge tokens, or steps < 1.
    """
    for name in metrics:
        if not getattr(get_metric(name), "judges_tokens", False):
            raise UsageError(f"{name} does not judge token attributions; use {', '.join(TOKEN_METRICS)}.")
    if int(steps) < 1:
        raise UsageError(f"steps must be at least 1, not {steps}.")
    p, t_count = attribution.prompt_length, len(attribution.generated_ids)
    contexts = [attribution.input_ids[: p + t] for t in range(t_count)]  # [n_t], n_t = P + t
    plans = [_plan(attribution.values[t, : p + t], contexts[t], steps, seed) for t in range(t_count)]
    # each distinct perturbed context scored once (e.g. nothing replaced: row 0, deletion's first, insertion's last)
    unique = [np.unique(plan["masks"], axis=0, return_inverse=True) for plan in plans]  # ([U, n], [R])
    scored = score(contexts, [rows for rows, _ in unique], [int(i) for i in attribution.generated_ids])
    probs = [np.asarray(pr, dtype=np.float64)[np.ravel(back)] for pr, (_, back) in zip(scored, unique)]  # [R] each
    found = [_judge(plan, pr, steps) for plan, pr in zip(plans, probs)]
    out = {}
    for name in metrics:
        metric = get_metric(name)
        own = np.array([f[name][0][0] for f in found], dtype=np.float64).reshape(t_count)
        chance = np.array([f[name][0][1] for f in found], dtype=np.float64).reshape(t_count)
        curves = [np.stack([f[name][1][v] for f in found]) if found else np.zeros((0, 0)) for v in (0, 1)]
        x = np.array(TENTHS) / 10 if name in ("comprehensiveness", "sufficiency") else np.linspace(0, 1, steps + 1)
        out[name] = MetricResult(name, attribution.method, own, random_baseline=chance,
                                 higher_is_better=metric.higher_is_better, curve_x=x, curve=curves[0],
                                 random_curve=curves[1],
                                 params={**(params or {}), "steps": int(steps), "seed": int(seed)})
    return out


def _plan(values: np.ndarray, context: np.ndarray, steps: int, seed: int) -> dict:
    """The masks [R, n] of one token's perturbed contexts: row 0 none, then per map (the method's,
    the random one's) 10 comprehensiveness, 10 sufficiency, steps + 1 deletion, steps + 1 insertion rows."""
    maps = np.stack([values, random_like(values[None], context[None], seed)[0]])  # [2, n]
    sets, valid = rationale_sets(maps)  # [2, 10, n], [2, 10]
    counts = curve_fractions(len(values), steps)  # [steps + 1]
    deleted = ranks(maps)[:, None, :] < counts[None, :, None]  # [2, steps + 1, n]
    blocks = [np.zeros((1, len(values)), bool)]
    for v in range(2):
        blocks += [sets[v], ~sets[v], deleted[v], ~deleted[v]]
    return {"masks": np.concatenate(blocks), "valid": valid, "x": counts / max(len(values), 1)}


def _judge(plan: dict, probs: np.ndarray, steps: int) -> dict[str, tuple[tuple[float, float], list[np.ndarray]]]:
    """metric -> ((own value, random value), [own curve, random curve]) of one token from its probabilities."""
    k, c = len(TENTHS), steps + 1
    width = 2 * k + 2 * c
    out: dict[str, tuple[list[float], list[np.ndarray]]] = {m: ([], []) for m in TOKEN_METRICS}
    for v in range(2):
        block = probs[1 + v * width: 1 + (v + 1) * width]
        valid = plan["valid"][v]
        for name, drops in (("comprehensiveness", probs[0] - block[:k]), ("sufficiency", probs[0] - block[k:2 * k])):
            out[name][0].append(float(aopc(drops[None], valid[None])[0]))
            out[name][1].append(np.where(valid, drops, np.nan))
        for name, curve in (("deletion", block[2 * k: 2 * k + c]), ("insertion", block[2 * k + c:])):
            out[name][0].append(float(auc(curve[None], plan["x"])[0]))
            out[name][1].append(curve)
    return {name: (tuple(values), curves) for name, (values, curves) in out.items()}


def token_quality_rows(judged: dict[str, MetricResult]) -> list[dict[str, Any]]:
    """One row per token metric of a text: its mean over the generated tokens, a random attribution's
    and which way is better (the Generate page's table, the saved run's drawer and the report)."""
    return [{"metric": get_metric(name).title, "this method": r.mean, "random": r.random_mean,
             "better": "higher" if r.higher_is_better else "lower"} for name, r in judged.items()]
