"""Run kinds: the one registry of how each kind of saved run (``RunInfo.page``) is written and read.

    kind        writer (-> RunRecord)                         reader (SavedRun -> ...)
    output      explain.workspace.records.output_record       output_attributions: [Attribution] per method
    dataset     explain.dataset.job.dataset_record            saved_dataset: DatasetView
    report      explain.report.job.run_report_job             report_html: the HTML bytes
    structure,
    training,
    overview    explain.workspace.records.snapshot_record     saved_snapshot: Snapshot (tables, findings, notes)
    importance  explain.output.importance_job.importance_record   saved_importance: LayerImportance
    drift       explain.training.drift_job.drift_record       saved_drift: AttributionDrift
    comparison  explain.compare.job.comparison_record         saved_comparison: Comparison
    generation  explain.generation.job.generation_record      saved_generation: SavedGeneration

Whoever reads a run's results (the API, the CLI, the pages) goes through its kind's reader
(`read_run`), never the raw keys of ``SavedRun.results``; the UI draws each kind with the
function ``ui.run_view.DRAWERS`` keys by the same names.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from explain.compare.job import comparison_record, saved_comparison
from explain.dataset.job import dataset_record, saved_dataset
from explain.errors import UsageError
from explain.generation.job import generation_record, saved_generation
from explain.output.importance_job import importance_record, saved_importance
from explain.report.job import report_html, run_report_job
from explain.training.drift_job import drift_record, saved_drift
from explain.workspace.records import output_attributions, output_record, saved_snapshot, snapshot_record
from explain.workspace.runs import RunRecord, SavedRun


@dataclass(frozen=True)
class RunKind:
    """One kind of saved run: ``write`` builds its `RunRecord`, ``read`` reads a `SavedRun` of it back."""

    name: str
    write: Callable[..., RunRecord]
    read: Callable[[SavedRun], Any]


RUN_KINDS: dict[str, RunKind] = {kind.name: kind for kind in (
    RunKind("output", output_record, output_attributions),
    RunKind("dataset", dataset_record, saved_dataset),
    RunKind("report", run_report_job, report_html),
    RunKind("importance", importance_record, saved_importance),
    RunKind("drift", drift_record, saved_drift),
    RunKind("comparison", comparison_record, saved_comparison),
    RunKind("generation", generation_record, saved_generation),
    *(RunKind(page, snapshot_record, saved_snapshot) for page in ("structure", "training", "overview")),
)}


def run_kind(name: str) -> RunKind:
    """The registered kind ``name``; `UsageError` for one nothing writes."""
    try:
        return RUN_KINDS[name]
    except KeyError:
        raise UsageError(f"Unknown run kind {name!r}. Known: {', '.join(RUN_KINDS)}.") from None


def read_run(run: SavedRun) -> Any:
    """A saved run's results as its kind's reader gives them (an Output run: its `Attribution`s)."""
    return run_kind(run.info.page).read(run)
