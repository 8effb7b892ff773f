"""Run kinds: the one registry of how each kind of saved run (``RunInfo.page``) is written, read and re-run.

    kind        writer (-> RunRecord)                         reader (SavedRun -> ...)               re-run (job kind: builder; differences per)
    output      explain.workspace.records.output_record       output_attributions: [Attribution]     explain: output.explain_job.rerun_job; method
    dataset     explain.dataset.job.dataset_record            saved_dataset: DatasetView             dataset: dataset_rerun; method
    report      explain.report.job.run_report_job             report_html: the HTML bytes            no: rebuilt with "Build report"
    structure,
    training,
    overview    explain.workspace.records.snapshot_record     saved_snapshot: Snapshot               no: records no computation
    importance  explain.output.importance_job.importance_record   saved_importance: LayerImportance  importance: importance_rerun; layer
    drift       explain.training.drift_job.drift_record       saved_drift: AttributionDrift          drift: drift_rerun; checkpoint
    comparison  explain.compare.job.comparison_record         saved_comparison: Comparison           compare: comparison_rerun; result
    generation  explain.generation.job.generation_record      saved_generation: SavedGeneration      generate: generation_rerun; prompt

Whoever reads a run's results (the API, the CLI, the pages) goes through its kind's reader
(`read_run`), never the raw keys of ``SavedRun.results``; the UI draws each kind with the
function ``ui.run_view.DRAWERS`` keys by the same names.

Re-run (issue 21) is one concept here, for the Saved runs page's button and ``runs rerun ID``: a kind
a job makes names its job kind, how that job is built again from the saved run (`rerun_request`: computed
afresh, never from a cache; the new run's ``summary["rerun_of"]`` names the saved one) and how a fresh run
differs from it (`difference_rows`: the page's table; `rerun_differences`: the CLI's
``{"max_abs_difference", "per_result"}``). A kind no job makes says in one line why not (`rerun_refusal`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.compare.job import comparison_differences, comparison_record, comparison_rerun, saved_comparison
from explain.dataset.job import dataset_differences, dataset_record, dataset_rerun, saved_dataset
from explain.errors import UsageError
from explain.generation.job import generation_differences, generation_record, generation_rerun, saved_generation
from explain.model import LoadedModel
from explain.output.explain_job import rerun_job
from explain.output.importance_job import importance_differences, importance_record, importance_rerun, saved_importance
from explain.report.job import report_html, run_report_job
from explain.training.drift_job import drift_differences, drift_record, drift_rerun, saved_drift
from explain.workspace.records import (
    output_attributions,
    output_differences,
    output_record,
    saved_snapshot,
    snapshot_record,
)
from explain.workspace.reruns import largest
from explain.workspace.runs import RunRecord, SavedRun

#: a re-run job's params, its arrays and its title, as each kind's job builder gives them
JobRequest = tuple[dict[str, Any], dict[str, np.ndarray], str]


@dataclass(frozen=True)
class Rerun:
    """How a saved run of a kind a job makes is made again: ``job``, the job kind; ``build(run, model)``, that
    job's `JobRequest` (``model()``: the run's version, loaded only for a kind whose builder checks against it);
    ``differences(saved, fresh)``, how the fresh run differs, one row per method / prompt / result / layer /
    checkpoint, the first column naming it and ``"max |difference|"`` among the others."""

    job: str
    build: Callable[[SavedRun, Callable[[], LoadedModel]], JobRequest]
    differences: Callable[[SavedRun, SavedRun], list[dict[str, Any]]]


@dataclass(frozen=True)
class RunKind:
    """One kind of saved run: ``write`` builds its `RunRecord`, ``read`` reads a `SavedRun` of it back;
    ``rerun`` makes it again (a kind a job makes), else ``no_rerun`` says why it cannot be."""

    name: str
    write: Callable[..., RunRecord]
    read: Callable[[SavedRun], Any]
    rerun: Rerun | None = None
    no_rerun: str = ""


def _model_free(build: Callable[[SavedRun], JobRequest]) -> Callable[[SavedRun, Callable[[], LoadedModel]], JobRequest]:
    """A builder that needs nothing but the run (the worker loads the model)."""
    return lambda run, model: build(run)


def _generation_rows(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    return generation_differences(saved_generation(saved), saved_generation(fresh))


_SNAPSHOT = "it is a snapshot of what its page showed and records no computation to repeat."

RUN_KINDS: dict[str, RunKind] = {kind.name: kind for kind in (
    RunKind("output", output_record, output_attributions,
            Rerun("explain", lambda run, model: rerun_job(model(), run), output_differences)),
    RunKind("dataset", dataset_record, saved_dataset, Rerun("dataset", _model_free(dataset_rerun), dataset_differences)),
    RunKind("report", run_report_job, report_html,
            no_rerun='a report is rebuilt with "Build report" on the run or version it reports.'),
    RunKind("importance", importance_record, saved_importance,
            Rerun("importance", _model_free(importance_rerun), importance_differences)),
    RunKind("drift", drift_record, saved_drift, Rerun("drift", _model_free(drift_rerun), drift_differences)),
    RunKind("comparison", comparison_record, saved_comparison,
            Rerun("compare", _model_free(comparison_rerun), comparison_differences)),
    RunKind("generation", generation_record, saved_generation,
            Rerun("generate", _model_free(generation_rerun), _generation_rows)),
    *(RunKind(page, snapshot_record, saved_snapshot, no_rerun=_SNAPSHOT) for page in ("structure", "training", "overview")),
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


def rerun_refusal(run: SavedRun) -> str | None:
    """Why ``run`` cannot be re-run, in one line (a report, a page's snapshot); None when it can."""
    kind = run_kind(run.info.page)
    return None if kind.rerun is not None else f"Run {run.info.id} is a {kind.name} run, which is not re-run: {kind.no_rerun}"


def rerun_request(run: SavedRun, model: Callable[[], LoadedModel]) -> tuple[str, dict[str, Any], dict[str, np.ndarray], str]:
    """The job that makes ``run`` again, as its kind builds it: (job kind, params, arrays, title), for
    `explain.service.client.submit`. ``model()``: the run's version, loaded (only an Output run asks for it).

    Raises:
        UsageError: a kind that is not re-run (`rerun_refusal`'s line), or a run too old to be.
    """
    refusal = rerun_refusal(run)
    if refusal is not None:
        raise UsageError(refusal)
    rerun = run_kind(run.info.page).rerun
    return (rerun.job, *rerun.build(run, model))


def difference_rows(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How the re-run ``fresh`` differs from ``saved``: its kind's rows (the Saved runs page's table)."""
    refusal = rerun_refusal(saved)
    if refusal is not None:
        raise UsageError(refusal)
    return run_kind(saved.info.page).rerun.differences(saved, fresh)


#: a row's column as a JSON key where snake case alone would not say it (`rerun_differences`)
_JSON_KEYS = {"max |difference|": "max_abs_difference", "relative to the map's max": "relative_to_max",
              "relative to the largest value": "relative_to_max"}


def rerun_differences(saved: SavedRun, fresh: SavedRun) -> dict[str, Any]:
    """`difference_rows` as ``runs rerun`` prints them: ``{"max_abs_difference": the largest of the rows' (NaN
    when one is: something changed shape), "per_result": {each row's first column: its other columns in snake
    case}}`` (an Output run: per method ``max_abs_difference``, ``relative_to_max``, ``saved_completeness_error``,
    ``now_completeness_error``, ``same_targets``)."""
    per_result = {}
    for row in difference_rows(saved, fresh):
        (_, name), *columns = row.items()
        per_result[str(name)] = {_JSON_KEYS.get(k, re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_")): v
                                 for k, v in columns}
    return {"max_abs_difference": largest(r["max_abs_difference"] for r in per_result.values()),
            "per_result": per_result}
