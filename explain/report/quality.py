"""The report's Quality section: the Output page's Quality tab as HTML (same table rows,
same `explain.viz.quality` figures, same findings)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from explain.model import LoadedModel
from explain.report.document import Section, escape, round_data, table_html


def build_quality_section(model: LoadedModel, inputs: np.ndarray, methods: Sequence[str],
                          method_params: dict[str, dict[str, Any]], metrics: Sequence[str],
                          masks: np.ndarray | None = None) -> Section:
    """Each metric of each method's maps of ``inputs`` (the attributions come from the cache the
    output sections filled), with its random-attribution baseline, curves and findings."""
    from explain.output.methods import get_method
    from explain.output.metrics.quality import evaluate_quality, quality_findings, quality_json, quality_rows
    from explain.viz.quality import curve_figure, sanity_figure

    attrs = [get_method(m).explain(model, inputs, **method_params.get(m, {})) for m in methods]
    results = evaluate_quality(model, attrs, metrics, masks)
    rows = quality_rows(results)
    table = table_html(rows, ["method", "metric", "mean", "random", "better than chance by", "beats random on",
                              "direction"],
                       numeric=("mean", "random", "better than chance by", "beats random on"))
    findings = quality_findings(results)
    notes = [f.message for f in findings]
    intro = ('<p class="muted">' + escape(
        f"{len(inputs)} inputs · metrics: {', '.join(metrics)}. Random: the same metric of a random attribution "
        "(each map's values shuffled), so each faithfulness number comes with its chance level.") + "</p>")
    figures = [fig for fig in (curve_figure(results, "deletion"), curve_figure(results, "insertion"),
                               sanity_figure(results)) if fig is not None]
    data = {"metrics": list(metrics), **quality_json(results), "findings": [f.to_dict() for f in findings]}
    return Section("Quality", body=intro + table, figures=figures, data=round_data(data), notes=notes)
