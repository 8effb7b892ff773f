"""Saved runs in the app: what each page saves (`output_record`, `snapshot_record`) and how a saved
run is shown again (`render_saved_run`, one drawer per run kind: `DRAWERS`).

`output_record` and `snapshot_record` live in `explain.workspace.records` (the queue's worker saves
the same runs); `explain.workspace.run_kinds` is the one registry of each kind's writer and reader.
An Output run stores the explained inputs with their spec, every method's arrays and the
probabilities, and is drawn again with the same `ui.attribution_view` functions as the live page,
from the saved arrays and spec (`run_view_model`: nothing is loaded or recomputed). "Re-run"
(editors) makes any run a job makes again as a job of the queue, as its kind does it
(`submit_rerun` through `explain.workspace.run_kinds.rerun_request`: an Output run's inputs, methods,
parameters (each input's recorded ``per_input`` values) and target, a dataset's rows, a comparison, a
ranking, a drift, a generation, computed afresh by a worker and saved as a run of its own);
`rerun_differences` lists how that run differs from this one. Structure, Training and Overview runs
store the tables and findings the page showed, and a report is rebuilt, not re-run (`rerun_refusal`).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.workspace import SavedRun
from explain.workspace.records import (
    output_attributions,
    output_probabilities,
    output_quality,
    output_record,
    saved_snapshot,
    saved_tables,
    snapshot_record,
)
from explain.workspace.run_kinds import difference_rows, rerun_refusal, rerun_request
from ui import workspace as team
from ui.attribution_view import MapOptions, render_grid, render_summary
from ui.text import escape_markdown

# -- what a page saves: `snapshot_record` (with `saved_tables`) lives in `explain.workspace.records`,
# each kind's writer and reader in `explain.workspace.run_kinds`; imported here for the pages.
__all__ = ["DRAWERS", "REPORT_DATASET_ROWS", "SavedModel", "output_record", "render_saved_run", "rerun_differences",
           "rerun_refusal", "run_model", "run_view_model", "saved_tables", "snapshot_record", "submit_rerun",
           "submit_run_report"]


REPORT_DATASET_ROWS = 8

# -- showing a saved run ------------------------------------------------------------------------
def run_model(run: SavedRun) -> LoadedModel:
    """The model version a run was saved with, from the registry through the process's one model
    cache (`ui.state.open_model`: the copy a page or the worker already holds): what Re-run and a
    run's report need, never what drawing the run needs (`run_view_model`)."""
    from ui import state

    data, filename, spec = team.workspace().registry.file(team.actor(), run.info.model, run.info.version)
    return state.open_model(data, run.info.sha256, "Loading the run's model version…", filename=filename,
                            spec=InputSpec.from_json(spec) if spec else None, name=run.info.model)


@dataclass(frozen=True)
class SavedModel:
    """What drawing a saved run needs of its model: its name and the spec the run stored
    (`SavedRun.spec`). Stands in for the `LoadedModel` the view functions read ``spec`` /
    ``modality`` / ``name`` from, so opening a run loads (and vets) nothing."""

    name: str
    spec: InputSpec

    @property
    def modality(self) -> str:
        return self.spec.modality


def run_view_model(run: SavedRun) -> SavedModel | LoadedModel:
    """The run's model as its view needs it: from the run's own spec; a run saved before runs
    stored their spec loads its model version (`run_model`)."""
    spec = run.spec
    return SavedModel(run.info.model, spec) if spec is not None else run_model(run)


def _draw_output(run: SavedRun) -> None:
    model = run_view_model(run)
    attrs = output_attributions(run)
    labels = run.inputs.get("labels")
    quality = output_quality(run)
    render_grid(model, attrs, run.info.summary.get("shown", []), output_probabilities(run), labels,
                MapOptions(sign=run.info.summary.get("sign", "all")), quality=quality)
    render_summary(model, attrs)
    if quality:
        from ui.quality_view import render_quality_table

        st.subheader("Quality")
        render_quality_table(quality)


def _draw_dataset(run: SavedRun) -> None:
    from explain.dataset.job import saved_dataset
    from ui.dataset_view import render_download
    from ui.dataset_view import render_summary as render_dataset_summary

    model = run_view_model(run)
    render_dataset_summary(model, saved_dataset(run, model.modality), f"run_{run.info.id}")
    render_download(run.results)


def _draw_report(run: SavedRun) -> None:
    summary = run.info.summary
    st.markdown("Sections: " + escape_markdown(", ".join(summary.get("sections", []))))
    for title, error in summary.get("failed", {}).items():
        st.warning(escape_markdown(f"{title} could not be built: {error}"))


def _draw_snapshot(run: SavedRun) -> None:
    snapshot = saved_snapshot(run)
    for finding in snapshot.findings:
        st.markdown(f"{finding.icon} **{escape_markdown(finding.kind)}** — {escape_markdown(finding.message)}")
    for title, frame in snapshot.tables.items():
        st.markdown(f"**{escape_markdown(title)}**")
        st.dataframe(frame, hide_index=True, width="stretch")
    for note in snapshot.notes:
        st.caption(escape_markdown(note))


def _draw_training(run: SavedRun) -> None:
    """A Training run: its curves drawn again from the saved per-epoch tables (one run with its findings
    marked, or the runs overlaid), then its findings and tables as `_draw_snapshot` shows them."""
    from explain.training.history import history_from_table
    from explain.viz import training as viz
    from ui import state

    snapshot = saved_snapshot(run)
    tables = snapshot.tables
    with state.error_boundary("Drawing the saved curves"):
        histories = [history_from_table(frame, title) for title, frame in tables.items()]
        smoothing = viz.default_smoothing(histories)
        figure = (viz.figure_curves(histories[0], snapshot.findings, smoothing) if len(histories) == 1
                  else viz.figure_runs(histories, smoothing, x=histories[0].default_x))
        st.plotly_chart(figure, key=f"run_{run.info.id}_curves")
    _draw_snapshot(run)


def _draw_importance(run: SavedRun) -> None:
    from explain.output.importance_job import saved_importance
    from ui.analysis_view import render_importance

    render_importance(saved_importance(run), key=f"run_{run.info.id}_importance")


def _draw_drift(run: SavedRun) -> None:
    from explain.training.drift_job import saved_drift
    from ui.analysis_view import render_drift

    render_drift(saved_drift(run), run_view_model(run).spec, run.inputs["inputs"], key=f"run_{run.info.id}_drift")


def _draw_comparison(run: SavedRun) -> None:
    from explain.compare.job import saved_comparison
    from ui.compare_view import render_comparison

    render_comparison(saved_comparison(run), run_view_model(run).spec, key=f"run_{run.info.id}_compare")


def _draw_generation(run: SavedRun) -> None:
    from explain.generation.job import saved_generation
    from ui.generation_view import render_saved_generation

    render_saved_generation(saved_generation(run), run_view_model(run).spec, key=f"run_{run.info.id}_generation")


#: how each run kind is drawn, keyed by the kinds of `explain.workspace.run_kinds.RUN_KINDS`.
DRAWERS = {"output": _draw_output, "dataset": _draw_dataset, "report": _draw_report,
           "structure": _draw_snapshot, "training": _draw_training, "overview": _draw_snapshot,
           "importance": _draw_importance, "drift": _draw_drift, "comparison": _draw_comparison,
           "generation": _draw_generation}


def render_saved_run(run: SavedRun) -> None:
    """Draw a run exactly as saved, with its kind's drawer (`DRAWERS`): the Output grid from the saved
    arrays, the Dataset summary, a report's sections, or the saved tables and findings. Nothing is
    loaded or recomputed: the model is the run's stored spec (`run_view_model`)."""
    DRAWERS.get(run.info.page, _draw_snapshot)(run)


def submit_rerun(run: SavedRun):
    """Queue the job that makes ``run`` again, as its kind builds it (`run_kinds.rerun_request`: computed
    afresh, never from a cache; only an Output run's builder loads its version, `run_model`), as an
    interactive job; the job. Submitting needs the editor role (`client.submit` checks it, whatever the
    page shows). `UsageError` with `rerun_refusal`'s line for a kind that is not re-run."""
    from explain.service.client import submit

    kind, params, arrays, title = rerun_request(run, lambda: run_model(run))
    return submit(team.workspace(), team.actor(), kind, params, title=title, inputs=arrays, priority="interactive")


def rerun_differences(saved: SavedRun, fresh: SavedRun) -> pd.DataFrame:
    """How the re-run ``fresh`` differs from ``saved``, one row per method, prompt, result, layer or
    checkpoint as its kind compares them (`run_kinds.difference_rows`): the largest absolute difference
    (also relative to the saved values' largest), completeness errors, same targets (same tokens)."""
    return pd.DataFrame(difference_rows(saved, fresh))


def submit_run_report(run: SavedRun):
    """Queue the HTML report of a run's model version and inputs, with this run's comments and the
    version's decisions (an offline copy that carries the review; a generation run: its Generation
    section); the job."""
    from ui import jobs

    info = run.info
    methods = info.summary.get("methods") or ([info.method] if info.page == "dataset" else
                                              [] if info.page == "generation" else ["integrated_gradients"])
    # a generation run: its Generation section, no classifier Output section (a causal LM has no inputs to map)
    inputs, labels = run.inputs.get("inputs"), run.inputs.get("labels")
    if info.page == "dataset" and inputs is not None:
        inputs = inputs[:REPORT_DATASET_ROWS]  # the report draws maps per input: the first rows stand for the rest
        labels = None if labels is None else labels[:REPORT_DATASET_ROWS]
    return jobs.submit_report(info.model, info.version, run_model(run), inputs, labels=labels, methods=methods,
                              method_params={m: info.params.get(m, {}) for m in methods} if info.page == "output" else None,
                              review_run=info.id, title=f"Glassbox run {info.id}: {info.title}",
                              generation=run if info.page == "generation" else None)  # its Generation section
