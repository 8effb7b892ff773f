"""The report's Compare section: a saved comparison of two versions (`explain.compare.job.saved_comparison`)
drawn with the figures the Compare page places (`explain.viz.compare`)."""
from __future__ import annotations

from explain.compare.comparison import Comparison
from explain.report.document import Section, escape, key_value_html, table_html
from explain.spec import InputSpec
from explain.viz import compare as viz


def build_compare_section(comparison: Comparison, spec: InputSpec) -> Section:
    """Outputs (agreement, flipped inputs, shift histogram), explanations (ρ per input, the maps of
    the flipped and most-changed inputs side by side), structure and training, A against B."""
    o, at, s = comparison.outputs, comparison.attributions, comparison.structure
    a, b = comparison.labels
    mean = at.mean
    parts = [key_value_html({"A": a, "B": b, "agreement": f"{o.agreement:.1%}",
                             "flipped inputs": ", ".join(f"#{i}" for i in o.flipped) or "none",
                             "largest probability change": o.max_probability_change,
                             f"mean rank correlation ({at.a.method}, {a}'s class)": "—" if mean is None else mean})]
    figures = [viz.figure_probability_shifts(comparison), viz.figure_rank_correlation(comparison)]
    for row in comparison.most_changed():
        for drawn, label in zip(viz.figure_maps(comparison, spec, row), comparison.labels):
            if isinstance(drawn, str):  # text: highlighted tokens
                parts.append(f"<p>{escape(label)} · input {row}</p>{drawn}")
            else:
                figures.append(drawn)
    parts.append("<h3>Structure</h3>" + table_html(s.table(), headers=["measure", a, b]))
    changed = s.layers_changed
    parts.append("<h3>Layers changed</h3>" + (table_html(changed) if changed else '<p class="muted">None: same layers, '
                                                                                  "by name and shape.</p>"))
    training = viz.figure_training(comparison)
    if training is not None:
        figures.append(training)
    else:
        parts.append('<p class="muted">Neither version has a training log attached.</p>')
    body = f"<p>{escape(a)} against {escape(b)}</p>" + "\n".join(parts)
    return Section(title="Compare", body=body, figures=figures, data=comparison.to_dict())
