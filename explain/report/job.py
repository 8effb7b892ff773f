"""A report as a job of the queue: what the Overview page, the Saved runs page and ``report``
submit (`report_job`), what a worker builds (`run_report_job`, registered in
`explain.service.runners`) and the saved run it becomes (its HTML: `report_html`).

The job carries everything `build_report` reads: the inputs, labels and masks as arrays, each
training log and checkpoint as its bytes (a TensorBoard folder as an `EventFolder`'s files), so a
worker on another machine builds the same report the CLI would build here.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explain.errors import UsageError
from explain.loading.source import read_source
from explain.model import LoadedModel
from explain.params import resolve_params
from explain.progress import ProgressFn
from explain.report.review import ReviewRecord
from explain.report.sections import DEFAULT_MAX_INPUTS, build_report
from explain.training.history import EventFolder
from explain.workspace.runs import RunRecord, SavedRun, environment

Log = tuple[str, bytes] | EventFolder


def file_as_data(path: str | os.PathLike) -> tuple[str, bytes]:
    """A log or checkpoint file as a job carries it: ``(its name, its bytes)``, read with the upload cap."""
    data, name = read_source(path)
    return name, data


def log_as_data(path: str | os.PathLike) -> Log:
    """A training log path as a job carries it: a TensorBoard folder as an `EventFolder`, a file by `file_as_data`."""
    return EventFolder.read(path) if Path(path).is_dir() else file_as_data(path)


def _bytes_array(data: bytes) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.uint8)


def report_job(model: LoadedModel, name: str, version: int, inputs: np.ndarray | None, *,
               labels: np.ndarray | None = None, logs: Sequence[Log] = (),
               checkpoints: Sequence[tuple[str, bytes]] = (), methods: Sequence[str] = ("integrated_gradients",),
               method_params: dict[str, dict[str, Any]] | None = None, max_inputs: int = DEFAULT_MAX_INPUTS,
               quality: Sequence[str] | None = None, masks: np.ndarray | None = None, title: str | None = None,
               invocation: dict[str, Any] | None = None, review: bool = False, review_run: str | None = None,
               comparison: SavedRun | None = None, generation: SavedRun | None = None,
               ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a report request now (unknown methods, parameters or metrics are refused when
    submitted): the job's params, arrays and title. ``review``: add the workspace's decisions and
    comments on the version (those of run ``review_run`` too) when the report is built.
    ``comparison``: a saved ``comparison`` run, carried whole (row and arrays) for a Compare section;
    ``generation``: a saved ``generation`` run, carried the same way for a Generation section."""
    from explain.output.methods import get_method
    from explain.output.metrics import get_metric

    methods = list(dict.fromkeys(methods))
    if not methods and generation is None:  # a generation run's report may be its Generation section alone
        raise UsageError("Choose at least one method for the report.")
    if max_inputs < 1:
        raise UsageError(f"max_inputs must be at least 1, got {max_inputs}.")
    given = {m: dict((method_params or {}).get(m, {})) for m in methods}
    for m in methods:
        resolve_params(get_method(m).params, given[m])
    for metric in quality or []:
        get_metric(metric)
    arrays: dict[str, np.ndarray] = {}
    if inputs is not None:
        arrays["inputs"] = np.asarray(inputs)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if masks is not None:
        arrays["masks"] = np.asarray(masks)
    described_logs = []
    for i, log in enumerate(logs):
        if isinstance(log, EventFolder):
            described_logs.append({"name": log.path, "folder": [rel for rel, _ in log.files]})
            arrays.update({f"log/{i}/{j}": _bytes_array(data) for j, (_, data) in enumerate(log.files)})
        else:
            described_logs.append({"name": log[0], "folder": None})
            arrays[f"log/{i}"] = _bytes_array(log[1])
    for i, (_, data) in enumerate(checkpoints):
        arrays[f"ckpt/{i}"] = _bytes_array(data)
    for kind, carried in (("comparison", comparison), ("generation", generation)):
        if carried is not None:
            if carried.info.page != kind:
                raise UsageError(f"Run {carried.info.id} is a {carried.info.page} run, not a {kind}.")
            arrays.update({f"{kind}/inputs/{k}": v for k, v in carried.inputs.items()})
            arrays.update({f"{kind}/results/{k}": v for k, v in carried.results.items()})
    params = {"model": name, "version": version, "methods": methods, "method_params": given,
              "max_inputs": int(max_inputs), "quality": None if quality is None else list(quality), "title": title,
              "invocation": invocation or {}, "review": bool(review), "review_run": review_run,
              "logs": described_logs, "checkpoints": [c[0] for c in checkpoints],
              "comparison": None if comparison is None else comparison.info.to_dict(),
              "generation": None if generation is None else generation.info.to_dict()}
    return params, arrays, f"report on {name}@v{version} ({', '.join(methods) or 'generation'})"


def run_report_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                   progress: ProgressFn, review: ReviewRecord | None,
                   carried: dict[str, Any] | None = None) -> RunRecord:
    """Build the report the job describes; saved as a ``report`` run holding its HTML.

    ``carried``: the runs `carried_runs` found, each read by its kind's reader (``comparison``: a
    `Comparison`, ``generation``: a `SavedGeneration`) — read by the caller, which may know the run
    kinds (`explain.workspace.run_kinds` registers this module's writer)."""
    carried = carried or {}
    logs: list[Log] = []
    for i, log in enumerate(params.get("logs", [])):
        if log.get("folder") is not None:
            logs.append(EventFolder(log["name"], tuple((rel, arrays[f"log/{i}/{j}"].tobytes())
                                                       for j, rel in enumerate(log["folder"]))))
        else:
            logs.append((log["name"], arrays[f"log/{i}"].tobytes()))
    checkpoints = [(ckpt_name, arrays[f"ckpt/{i}"].tobytes()) for i, ckpt_name in enumerate(params.get("checkpoints", []))]
    start = time.perf_counter()
    report = build_report(model, arrays.get("inputs"), logs=logs, checkpoints=checkpoints, methods=params["methods"],
                          progress=progress, max_inputs=int(params.get("max_inputs", DEFAULT_MAX_INPUTS)),
                          method_params=params.get("method_params"), labels=arrays.get("labels"),
                          title=params.get("title"), invocation=params.get("invocation") or None, review=review,
                          quality=params.get("quality"), masks=arrays.get("masks"),
                          comparison=carried.get("comparison"), generation=carried.get("generation"))
    html = report.to_html().encode("utf-8")
    saved_inputs = {k: arrays[k] for k in ("inputs", "labels") if k in arrays}
    return RunRecord(
        page="report", model=params["model"], version=int(params["version"]), method=",".join(params["methods"]),
        title=report.title, params={"methods": params["methods"], "method_params": params.get("method_params", {}),
                                    "max_inputs": params.get("max_inputs"), "quality": params.get("quality"),
                                    "logs": [log["name"] for log in params.get("logs", [])],
                                    "checkpoints": params.get("checkpoints", [])},
        target=None, inputs=saved_inputs, results={"html": _bytes_array(html)},
        summary={"sections": report.section_titles,
                 "failed": {s.title: s.error for s in report.sections if s.error},
                 "bytes": len(html), "seconds": time.perf_counter() - start},
        environment=environment())


def carried_runs(params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, SavedRun]:
    """The saved runs `report_job` carried whole (``comparison``, ``generation``), by kind; none: {}."""
    from explain.workspace.runs import RunInfo

    out = {}
    for kind in ("comparison", "generation"):
        info = params.get(kind)
        if info:
            part = {role: {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"{kind}/{role}/")}
                    for role in ("inputs", "results")}
            out[kind] = SavedRun(RunInfo(**info), part["inputs"], part["results"])
    return out


def report_html(run: SavedRun) -> bytes:
    """The saved report's HTML, byte for byte."""
    if run.info.page != "report":
        raise UsageError(f"Run {run.info.id} is a {run.info.page} run, not a report.")
    return run.results["html"].tobytes()
