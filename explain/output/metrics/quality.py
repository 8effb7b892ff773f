"""Several metrics of several methods at once: the table the page, the report and
``python -m explain evaluate`` share, its JSON, and the findings it supports.

``results[method][metric]`` is a `MetricResult`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from explain.attribution import Attribution
from explain.finding import Finding
from explain.model import LoadedModel
from explain.output.metrics.base import MetricResult, compatible_metrics, get_metric
from explain.output.metrics.randomisation.randomization import fails
from explain.progress import ProgressFn

Results = dict[str, dict[str, MetricResult]]

#: the metrics computed by default: forward passes only, no re-explanation.
CHEAP_METRICS = ("deletion", "insertion", "faithfulness_correlation", "infidelity",
                 "pointing_game", "relevance_mass", "sparseness", "complexity")


def default_metrics(model: LoadedModel, has_masks: bool) -> list[str]:
    """The cheap metrics defined for ``model`` (localisation only with masks)."""
    return [m.name for m in compatible_metrics(model)
            if m.name in CHEAP_METRICS and (has_masks or not m.needs_masks)]


def evaluate_quality(
    model: LoadedModel,
    attributions: Sequence[Attribution],
    metrics: Iterable[str],
    masks: np.ndarray | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str, str], ProgressFn | None] | None = None,
) -> Results:
    """Each metric of each attribution.

    Args:
        metrics: metric names (each checked: known, compatible, masks given when needed).
        params: per metric name, its parameters.
        progress: progress(method, metric) -> a progress callback for that pair (or None).
    """
    params = params or {}
    chosen = [get_metric(name) for name in metrics]
    results: Results = {}
    for attr in attributions:
        row = results.setdefault(attr.method, {})
        for metric in chosen:
            callback = progress(attr.method, metric.name) if progress else None
            row[metric.name] = metric.evaluate(model, attr, masks=masks, progress=callback,
                                               **params.get(metric.name, {}))
    return results


def quality_json(results: Results) -> dict[str, Any]:
    """``{"methods": {METHOD: {METRIC: {"per_input": [...], "mean": x, "random_baseline": y or None}}}}``."""
    return {"methods": {method: {metric: r.to_json() for metric, r in row.items()}
                        for method, row in results.items()}}


def quality_rows(results: Results) -> list[dict[str, Any]]:
    """One row per (method, metric): the table the page and the report show."""
    rows = []
    for method, row in results.items():
        for name, r in row.items():
            metric = get_metric(name)
            beats = r.beats_random()
            rows.append({
                "method": method,
                "metric": metric.title,
                "mean": r.mean,
                "random": r.random_mean,
                "better than chance by": r.margin,
                "beats random on": None if beats is None else float(np.mean(beats)),
                "direction": "higher is better" if r.higher_is_better else "lower is better",
                "seconds": r.seconds,
            })
    return rows


def badge(result: MetricResult, index: int) -> tuple[str, str, str]:
    """(label, colour, tooltip) of one input's value: green when better than the random
    attribution (or passing the randomisation check), red when not, grey without a baseline."""
    metric = get_metric(result.metric)
    value = result.per_input[index]
    label = f"{metric.title} {value:.2f}" if np.isfinite(value) else f"{metric.title} n/a"
    colour = "gray"
    tip = metric.summary
    if result.random_baseline is not None and np.isfinite(value):
        chance = result.random_baseline[index]
        better = bool(result.beats_random()[index])
        colour = "green" if better else "red"
        tip = f"{tip} Random attribution: {chance:.2f}."
    elif result.metric == "randomization" and np.isfinite(value):
        colour = "green" if value < float(result.params.get("threshold", 0.5)) else "red"
    return label, colour, tip


def quality_findings(results: Results) -> list[Finding]:
    """Findings about the explanations: a method that fails the randomisation check (its map
    survives a randomised model), and one no better than its random attribution."""
    findings = []
    for method, row in results.items():
        sanity = row.get("randomization")
        if sanity is not None and fails(sanity):
            findings.append(Finding(
                "randomisation_check", "warning",
                f"{method} fails the randomisation check: its maps keep a rank correlation of "
                f"{sanity.mean:.2f} with the original after {len(sanity.curve_labels) - 1} blocks of the "
                "model are randomised, so they do not show what the model learned.",
                evidence={"method": method, "final_correlation": sanity.mean,
                          "threshold": sanity.params.get("threshold")},
            ))
        for name in ("deletion", "insertion"):
            r = row.get(name)
            if r is not None and r.margin is not None and r.margin <= 0:
                findings.append(Finding(
                    "no_better_than_chance", "warning",
                    f"{method} is no better than a random attribution on {get_metric(name).title} "
                    f"({r.mean:.3f} vs {r.random_mean:.3f}).",
                    evidence={"method": method, "metric": name, "mean": r.mean, "random": r.random_mean},
                ))
    return findings
