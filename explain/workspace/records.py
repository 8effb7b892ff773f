"""The Output page's saved run, built in one place for the page and for the job queue's worker
(`explain.service.runners`), so a run saved by the API opens on the Runs page like any other; and
the Structure / Training / Overview pages' snapshot run (`snapshot_record`, read back by
`saved_snapshot`). `explain.workspace.run_kinds` names each kind's writer and reader."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.attribution import Attribution
from explain.digest import digest_array
from explain.finding import Finding
from explain.model import LoadedModel
from explain.output.metrics.base import MetricResult
from explain.output.metrics.quality import Results
from explain.workspace.reruns import max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs

if TYPE_CHECKING:
    import pandas as pd


def output_record(name: str, version: int, model: LoadedModel, inputs: np.ndarray, rows: Sequence[int],
                  shown: Sequence[int], probs: np.ndarray, labels: np.ndarray | None,
                  attrs: Sequence[Attribution], target: int | None, sign: str,
                  params: dict[str, dict[str, Any]], quality: Results | None = None) -> RunRecord:
    """The Output page's run: ``inputs`` [N, ...] are the explained rows (``rows`` of the batch), with
    ``model``'s spec (`SavedRun.spec`: the run is drawn again without loading the model); each
    method's parameters as recorded (``per_input`` included); ``quality[method][metric]`` the
    metrics measured on them (`output_quality` reads them back)."""
    saved_inputs = {"inputs": inputs, "rows": np.asarray(rows, dtype=np.int64), **spec_inputs(model.spec)}
    if labels is not None:
        saved_inputs["labels"] = np.asarray(labels)
    results: dict[str, np.ndarray] = {"probs": np.asarray(probs)}
    for i, attr in enumerate(attrs):
        for key, value in attr.to_npz_dict().items():
            if value is not None:
                results[f"{i}/{key}"] = value
    methods = [a.method for a in attrs]
    first = attrs[0]
    quality_meta: dict[str, dict[str, Any]] = {}
    for method, row in (quality or {}).items():
        for metric, result in row.items():
            quality_meta.setdefault(method, {})[metric] = result.meta()
            results.update({f"q/{method}/{metric}/{k}": v for k, v in result.to_npz_dict().items()})
    return RunRecord(
        page="output", model=name, version=version, method=",".join(methods),
        title=f"{', '.join(methods)} on {len(inputs)} inputs of {model.name}",
        params={m: params.get(m, {}) for m in methods}, target=target, inputs=saved_inputs, results=results,
        summary={"methods": methods, "shown": list(map(int, shown)), "sign": sign,
                 "inputs_sha256": digest_array(inputs),
                 "max_completeness_error": {a.method: a.max_completeness_error for a in attrs},
                 "seconds": {a.method: a.seconds for a in attrs}, "notes": {a.method: a.notes for a in attrs},
                 "quality": quality_meta},
        environment=environment(device=first.device, precision=first.precision))


def output_attributions(run: SavedRun) -> list[Attribution]:
    """The inverse of `output_record`: an Output run's attributions, one per method, as computed."""
    info = run.info
    out = []
    for i, method in enumerate(info.summary.get("methods", [])):
        arrays = {k.split("/", 1)[1]: v for k, v in run.results.items() if k.startswith(f"{i}/")}
        out.append(Attribution.from_npz_dict(arrays, method, info.params.get(method, {}),
                                             device=info.environment.get("device", "cpu"),
                                             precision=info.environment.get("precision", "fp32"),
                                             seconds=float(info.summary.get("seconds", {}).get(method) or 0.0),
                                             notes=list(info.summary.get("notes", {}).get(method) or [])))
    return out


def output_probabilities(run: SavedRun) -> np.ndarray:
    """The inverse of `output_record`'s ``probs``: float [N, K], the model's probabilities of the run's inputs."""
    return np.asarray(run.results["probs"])


def output_quality(run: SavedRun) -> Results:
    """The inverse of `output_record`'s ``quality``: ``results[method][metric]`` as measured."""
    out: Results = {}
    for method, row in (run.info.summary.get("quality") or {}).items():
        for metric, meta in row.items():
            prefix = f"q/{method}/{metric}/"
            arrays = {k[len(prefix):]: v for k, v in run.results.items() if k.startswith(prefix)}
            out.setdefault(method, {})[metric] = MetricResult.from_npz_dict(metric, method, arrays, meta)
    return out


def output_differences(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, e.g. `explain.service.runners.rerun_job`'s run) differs from the Output
    run it repeats: per method the largest absolute difference of the maps, that relative to the
    saved map's largest value, both completeness errors and whether the targets are the same."""
    now = {a.method: a for a in output_attributions(fresh)}
    rows = []
    for attr in output_attributions(saved):
        again = now.get(attr.method)
        diff = float("nan") if again is None else max_difference(attr.values, again.values)  # NaN: other shapes
        rows.append({"method": attr.method, "max |difference|": diff,
                     "relative to the map's max": relative(diff, attr.values),
                     "saved completeness error": attr.max_completeness_error,
                     "now completeness error": again.max_completeness_error if again else float("nan"),
                     "same targets": again is not None and np.shape(again.values) == np.shape(attr.values)
                     and bool(np.array_equal(again.target, attr.target))})
    return rows


# -- Structure / Training / Overview runs -------------------------------------------------------
def snapshot_record(page: str, name: str, version: int, title: str, inputs: np.ndarray | None,
                    tables: dict[str, pd.DataFrame], findings: Sequence[Finding] = (),
                    notes: Sequence[str] = (), results: dict[str, np.ndarray] | None = None) -> RunRecord:
    """A Structure / Training / Overview run: the tables and findings the page showed (and any arrays)."""
    return RunRecord(
        page=page, model=name, version=version, title=title,
        inputs={"inputs": inputs} if inputs is not None else {}, results=dict(results or {}),
        summary={"tables": {k: _frame_json(v) for k, v in tables.items()},
                 "findings": [f.to_dict() for f in findings],
                 "notes": list(notes),
                 "inputs_sha256": digest_array(inputs) if inputs is not None else None})


def _frame_json(frame: pd.DataFrame) -> dict:
    split = frame.astype(object).where(frame.notna(), None).to_dict(orient="split")
    return {"columns": [str(c) for c in split["columns"]], "data": split["data"]}


def saved_tables(summary: dict) -> dict[str, pd.DataFrame]:
    """The tables a Structure / Training / Overview run stored (`snapshot_record`), as its view shows them
    (a Structure or Overview run's "Layers": `explain.structure.layers.layer_frame`, as the page showed it)."""
    import pandas as pd  # only where a run's tables are read back

    return {title: pd.DataFrame(table["data"], columns=table["columns"])
            for title, table in summary.get("tables", {}).items()}


@dataclass(frozen=True)
class Snapshot:
    """A Structure / Training / Overview run read back: what its page showed."""

    tables: dict[str, pd.DataFrame]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def saved_snapshot(run: SavedRun) -> Snapshot:
    """The inverse of `snapshot_record`: the run's tables, findings (`Finding.from_dict`) and notes."""
    summary = run.info.summary
    return Snapshot(saved_tables(summary), [Finding.from_dict(f) for f in summary.get("findings", [])],
                    [str(n) for n in summary.get("notes", [])])
