"""A sample's Overview training curves, shipped beside it as plain JSON (issue 21, "no waiting").

The Overview's Training column draws a sample's log (`train_log.csv`) as `explain.viz.training.figure_overview`
draws it, with its findings (`explain.training.findings.diagnose`). Computing that reads the log with pandas:
0.7-1.1 s of a fresh server's first script run, spent while the browser loads its chart code for the map sent
just before. So the curves are computed once, when the sample is built (``python -m sample_models.train``), and
kept beside it (`FIRST_CURVES_FILE`: the figure as plotly JSON and the findings as `Finding.to_dict`), under the
sha256 of the log they were drawn from; the app's first paint (`ui.first_paint`) reads them back with `json`
alone (`read_shipped_curves`) and computes them (`compute_curves`) only for a log the file does not match.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from explain.digest import digest_bytes
from explain.finding import Finding

#: the file beside a sample holding its Overview curves and findings
FIRST_CURVES_FILE = "overview_curves.json"
#: the Overview's curves' height (`explain.report.overview.training_figure`'s default)
CURVES_HEIGHT = 420


def compute_curves(log_file: Path) -> tuple[dict[str, Any], list[Finding]]:
    """The curves of the log at ``log_file`` as the Overview draws them (the figure as plotly JSON:
    ``{"data", "layout"}``) and their findings, worst first; no torch imported (pandas is)."""
    import plotly.io as pio

    from explain.finding import sort_findings
    from explain.training.findings import diagnose
    from explain.training.history import merge_histories, read_histories
    from explain.viz.training import figure_overview

    history = merge_histories(read_histories([str(log_file)]))  # `explain.report.analysis.read_training_history`
    findings = sort_findings(diagnose(history))
    figure = figure_overview([history], [findings], height=CURVES_HEIGHT)
    spec = json.loads(pio.to_json(figure, validate=False))
    if figure.layout.template == pio.templates[pio.templates.default]:  # no template of its own: the process's
        del spec["layout"]["template"]  # default, which the drawing process applies (Streamlit sets its own)
    return spec, findings


def write_first_curves(log_file: Path, path: Path) -> None:
    """Compute the curves of ``log_file`` (`compute_curves`) and write them to ``path`` with the log's sha256."""
    figure, findings = compute_curves(log_file)
    record = {"log_sha256": digest_bytes(Path(log_file).read_bytes()), "figure": figure,
              "findings": [f.to_dict() for f in findings]}
    Path(path).write_text(json.dumps(record, separators=(",", ":")))


def read_shipped_curves(log_file: Path, shipped: Path) -> tuple[dict[str, Any], list[Finding]] | None:
    """The figure and findings (as `compute_curves` returns them) shipped in ``shipped`` for the log at
    ``log_file``; None when the file is absent, unreadable or was drawn from another log."""
    try:
        record = json.loads(Path(shipped).read_text())
        if record["log_sha256"] != digest_bytes(Path(log_file).read_bytes()):
            return None
        figure = record["figure"]
        if not isinstance(figure, dict) or not isinstance(figure.get("data"), list):
            return None
        return figure, [Finding.from_dict(f) for f in record["findings"]]
    except (OSError, ValueError, KeyError, TypeError):  # absent or not ours: computed from the log
        return None
