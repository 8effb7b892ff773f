"""A comparison as a job of the queue and a saved run: job kind ``compare``, run kind
``comparison`` (`explain.workspace.run_kinds`).

    params, arrays, title = compare_job(model_a, model_b, ref_a, ref_b, inputs, method, params,
                                        sizes=..., logs=...)       # checked before anything is queued
    record = run_compare(ctx)                                       # the worker (`service.runners`)
    comparison = saved_comparison(run)                              # the run read back: a Comparison
    params, arrays, title = comparison_rerun(run)                   # asked again, computed afresh
    rows = comparison_differences(saved, fresh)                     # how the re-run differs

The job names both registry versions (``a`` / ``b``: ``NAME@vN``, the references a decision's
comparison is checked against, `explain.workspace.review`), carries the inputs, the method's array
parameters and both versions' training logs as arrays; the run keeps the inputs with their spec,
both versions' probabilities and maps, the structure of each side, and the logs, so the page, the
Saved runs page and the report draw the same figures from it without loading either model.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from explain.attribution import Attribution
from explain.compare.attributions import AttributionChange
from explain.compare.comparison import Comparison, check_comparable, compare_models
from explain.compare.outputs import OutputChange
from explain.compare.structure import ModelStructure, StructureChange
from explain.compare.training import Logs, training_histories
from explain.errors import UsageError
from explain.model import LoadedModel
from explain.params import resolve_params
from explain.workspace.registry import parse_ref
from explain.workspace.reruns import as_rerun, max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs

#: the job kind and the run kind
JOB_KIND, RUN_KIND = "compare", "comparison"


def _log_arrays(side: str, logs: Logs) -> dict[str, np.ndarray]:
    return {f"log/{side}/{i}": np.frombuffer(bytes(data), dtype=np.uint8) for i, (_, data) in enumerate(logs)}


def _logs_from(arrays: dict[str, np.ndarray], side: str, names: list[str]) -> list[tuple[str, bytes]]:
    return [(name, np.asarray(arrays[f"log/{side}/{i}"], dtype=np.uint8).tobytes()) for i, name in enumerate(names)]


def version_logs(ws, actor, info) -> list[tuple[str, bytes]]:
    """The training logs attached to registry version ``info`` (a `VersionInfo`), as (file name, bytes)."""
    return [(a.filename, ws.core.blobs.get(a.sha256)) for a in ws.registry.attachments(actor, info.name, info.version)
            if a.kind == "training_log"]


def compare_job(model_a: LoadedModel, model_b: LoadedModel, ref_a: str, ref_b: str, inputs: np.ndarray,
                method: str, params: dict[str, Any] | None = None, *,
                sizes: tuple[int | None, int | None] = (None, None), logs: tuple[Logs, Logs] = ((), ()),
                ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a comparison request now (both models take ``inputs``, the method fits both, its
    parameters resolve): the job's params, arrays and title. ``ref_a`` / ``ref_b``: ``NAME@vN``.

    Raises:
        IncompatibleInput: the versions take other inputs or predict other classes; inputs that do not fit.
        UsageError: an unknown method, one that does not fit a version, a bad parameter.
    """
    from explain.output.methods import get_method

    check_comparable(model_a, model_b)
    explainer = get_method(method)
    for model in (model_a, model_b):
        reason = explainer.incompatibility(model)
        if reason:
            raise UsageError(reason)
        model.as_tensor(inputs)  # IncompatibleInput: the wrong shape
    given = dict(params or {})
    own = {k: np.asarray(given.pop(k)) for k, spec in explainer.params.items()
           if spec.kind == "array" and isinstance(given.get(k), np.ndarray)}
    resolve_params(explainer.params, {**given, **own})
    for ref in (ref_a, ref_b):
        if not isinstance(parse_ref(ref)[1], int):
            raise UsageError(f"{ref!r} is not a registry version (NAME@vN).")
    arrays = {"inputs": np.asarray(inputs), **{f"param/{k}": v for k, v in own.items()},
              **_log_arrays("a", logs[0]), **_log_arrays("b", logs[1])}
    job_params = {"a": ref_a, "b": ref_b, "method": explainer.name, "params": given,
                  "sizes": [None if s is None else int(s) for s in sizes],
                  "logs": [[name for name, _ in logs[0]], [name for name, _ in logs[1]]]}
    return job_params, arrays, f"Compare {ref_a} with {ref_b}: {explainer.name} on {len(inputs)} inputs"


def run_compare(ctx) -> RunRecord:
    """What the worker runs for a ``compare`` job (`compare_job` built it); ``ctx``: its `JobContext`."""
    p = ctx.job.params
    (name_a, version_a), (name_b, version_b) = parse_ref(p["a"]), parse_ref(p["b"])
    model_a, model_b = ctx.model(name_a, int(version_a)), ctx.model(name_b, int(version_b))
    arrays = ctx.inputs
    own = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("param/")}
    logs = (_logs_from(arrays, "a", p["logs"][0]), _logs_from(arrays, "b", p["logs"][1]))
    fresh = {"use_cache": False} if p.get("fresh") else {}  # a re-run: both versions explain again
    comparison = compare_models(model_a, model_b, arrays["inputs"], p["method"], {**p["params"], **own, **fresh},
                                labels=(p["a"], p["b"]), sizes=tuple(p["sizes"]), logs=logs, progress=ctx.progress)
    return as_rerun(comparison_record(comparison, model_a, p, logs, own), p)


def comparison_record(comparison: Comparison, model_a: LoadedModel, params: dict[str, Any],
                      logs: tuple[Logs, Logs] = ((), ()), own: dict[str, np.ndarray] | None = None) -> RunRecord:
    """The ``comparison`` run of ``comparison`` (saved under version A, ``params``: the job's; ``own``: the
    method's array parameters as the job carried them, ``param/<name>``, kept for a re-run)."""
    name, version = parse_ref(params["a"])
    o, at, s = comparison.outputs, comparison.attributions, comparison.structure
    return RunRecord(
        page=RUN_KIND, model=name, version=int(version), method=at.a.method,
        title=f"Comparison of {params['a']} with {params['b']}",
        params={"a": params["a"], "b": params["b"], "method": at.a.method, "params": params.get("params", {}),
                "sizes": params.get("sizes", [None, None]),
                "logs": [[log_name for log_name, _ in side] for side in logs]},
        target=[int(t) for t in at.a.target],
        inputs={"inputs": np.asarray(comparison.inputs), **spec_inputs(model_a.spec),
                **_log_arrays("a", logs[0]), **_log_arrays("b", logs[1]),
                **{f"param/{k.removeprefix('param/')}": np.asarray(v) for k, v in (own or {}).items()}},
        results={"probs_a": o.probs_a, "probs_b": o.probs_b, "values_a": at.a.values, "values_b": at.b.values,
                 "target": at.a.target, "rank_correlation": at.rank_correlation},
        summary={**comparison.to_dict(), "labels": list(comparison.labels),
                 "sides": [asdict(s.a), asdict(s.b)]},
        environment=environment())


def comparison_rerun(run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved comparison asked again as a ``compare`` job (its params, arrays and title): the same two
    versions, inputs, method with its parameters (array ones too), sizes and training logs, both versions
    explained afresh (``fresh``: never the attribution cache); its run names this one (``rerun_of``)."""
    info = run.info
    params = {"a": info.params["a"], "b": info.params["b"], "method": info.params.get("method") or info.method,
              "params": dict(info.params.get("params") or {}), "sizes": list(info.params.get("sizes") or [None, None]),
              "logs": info.params.get("logs") or [[], []], "fresh": True, "rerun_of": info.id}
    arrays = {k: np.asarray(v) for k, v in run.inputs.items()
              if k == "inputs" or k.startswith(("param/", "log/a/", "log/b/"))}
    return params, arrays, f"Re-run of {info.id}: {info.title}"


#: what a re-run of a comparison compares: each version's probabilities and maps, and their rank correlation
COMPARED = ("probs_a", "probs_b", "values_a", "values_b", "rank_correlation")


def comparison_differences(saved: SavedRun, fresh: SavedRun) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, `comparison_rerun`'s run) differs from the comparison it repeats: per saved
    result (`COMPARED`) the largest absolute difference (also relative to the saved one's largest value; NaN
    where the shapes differ or a correlation became undefined) and whether both explained the same classes."""
    same = bool(np.array_equal(saved.results["target"], fresh.results["target"]))
    rows = []
    for key in COMPARED:
        diff = max_difference(saved.results[key], fresh.results[key])
        rows.append({"result": key, "max |difference|": diff,
                     "relative to the largest value": relative(diff, saved.results[key]), "same targets": same})
    return rows


def saved_comparison(run: SavedRun) -> Comparison:
    """The inverse of `comparison_record`: the `Comparison` as `compare_models` returned it."""
    info, r = run.info, run.results
    inputs = np.asarray(run.inputs["inputs"])
    method = info.method or info.params.get("method", "")
    a = Attribution(np.asarray(r["values_a"]), inputs, np.asarray(r["target"]), method)
    b = Attribution(np.asarray(r["values_b"]), inputs, np.asarray(r["target"]), method)
    labels = tuple(info.summary.get("labels") or (info.params["a"], info.params["b"]))
    names = info.params.get("logs") or [[], []]
    logs = (_logs_from(run.inputs, "a", names[0]), _logs_from(run.inputs, "b", names[1]))
    sides = [ModelStructure(**side) for side in info.summary["sides"]]
    return Comparison(labels=labels, inputs=inputs, outputs=OutputChange(r["probs_a"], r["probs_b"]),
                      attributions=AttributionChange(a, b, np.asarray(r["rank_correlation"], dtype=np.float64)),
                      structure=StructureChange(*sides), training=training_histories(logs[0], logs[1], labels),
                      spec=run.spec)
