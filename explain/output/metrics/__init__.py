"""Quality metrics of explanations. Importing this package registers every metric.

One module per metric under its category folder (Quantus's taxonomy); see
`explain.output.metrics.base` for the `Metric` frame and docs/ARCHITECTURE.md for how to
add one.
"""
import importlib

from explain.output.metrics.base import (
    CATEGORIES,
    Metric,
    MetricResult,
    all_metrics,
    compatible_metrics,
    get_metric,
    register,
)

#: one module per metric, in the order the UI lists them.
METRIC_MODULES = (
    "faithfulness.deletion",
    "faithfulness.insertion",
    "faithfulness.comprehensiveness",
    "faithfulness.sufficiency",
    "faithfulness.faithfulness_correlation",
    "faithfulness.infidelity",
    "robustness.max_sensitivity",
    "randomisation.randomization",
    "localisation.pointing_game",
    "localisation.relevance_mass",
    "complexity.sparseness",
    "complexity.complexity",
)

for _name in METRIC_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["CATEGORIES", "Metric", "MetricResult", "all_metrics", "compatible_metrics", "get_metric", "register",
           "METRIC_MODULES"]
