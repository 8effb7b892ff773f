"""What each job kind runs: a function from a `JobContext` to the `RunRecord` the job saves.

    RUNNERS["explain"]   methods on a batch of inputs -> an Output run (`explain_methods_job` builds it;
                         `rerun_job` asks a saved Output run's explanation again, computed afresh)
    RUNNERS["dataset"]   one method on a whole dataset, shard by shard -> a Dataset run
                         (`explain.dataset.job.dataset_job` builds it)
    RUNNERS["report"]    the HTML report of a model version -> a report run
                         (`explain.report.job.report_job` builds it)
    RUNNERS["importance"] the Structure page's Rank layers -> an importance run
                         (`explain.output.importance_job.importance_job` builds it)
    RUNNERS["drift"]     the Training page's attribution drift over checkpoints -> a drift run
                         (`explain.training.drift_job.drift_job` builds it)
    RUNNERS["generate"]  a causal LM's generation, each new token attributed -> a generation run
                         (`explain.generation.job.generation_job` builds it)

A runner reports progress with ``ctx.progress(done, total)``; that call raises `Cancelled`
when the job's owner cancelled it, which the attribution engine lets through. A runner whose work
comes in chunks calls ``ctx.between_chunks()`` between two of them, where no hook is on any model:
a cancel takes effect there at once, and a batch job lets waiting interactive jobs run there
(`explain.service.worker`), then goes on where it stopped. The models a runner opens with
``ctx.model`` are held for the job (`explain.service.model_locks`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from explain.compare.job import run_compare
from explain.errors import UsageError
from explain.generation.job import run_generation
from explain.model import LoadedModel
from explain.params import resolve_params
from explain.progress import ProgressFn
from explain.service.models import ModelCache
from explain.workspace import RunRecord, SavedRun, Workspace
from explain.workspace.jobs import JobInfo
from explain.workspace.records import output_record


@dataclass
class JobContext:
    ws: Workspace
    job: JobInfo
    inputs: dict[str, np.ndarray]  # the arrays submitted with the job
    progress: ProgressFn
    models: ModelCache
    #: the job's result so far, for every session following it (`Jobs.publish_partial`)
    publish: Callable[[dict[str, np.ndarray]], None] = lambda arrays: None
    #: hold a model this job opened for as long as it runs (`model_locks.Holding.take`)
    hold: Callable[[LoadedModel], None] = lambda model: None
    #: a safe point between two chunks: cancel, or pause for interactive work (raises `Cancelled`)
    between_chunks: Callable[[], None] = lambda: None

    def model(self, name: str, version: int) -> LoadedModel:
        """A registry version, loaded as the job's owner may see it, held for the job."""
        model = self.models.get(self.job.owner_actor, name, version)
        self.hold(model)
        return model


def job_shares_models(job: JobInfo) -> bool:
    """True when the job's work on its models is forward and backward passes only (its methods'
    `Explainer.shares_model`, on the device they are on): an ``explain`` job without quality metrics,
    or a ``dataset`` job on the local engine. Such jobs hold a model shared (`model_locks.Holding`):
    two of them run on one model at once; every other job holds its models alone."""
    from explain.errors import GlassboxError
    from explain.output.methods import get_method

    p = job.params
    if job.kind == "explain" and not p.get("metrics"):
        asked = [(m.get("method"), m.get("params") or {}) for m in p.get("methods") or []]
    elif job.kind == "dataset" and p.get("engine", "local") == "local":
        asked = [(p.get("method"), p.get("params") or {})]
    else:
        return False
    try:
        return bool(asked) and all(get_method(str(name)).shares_model and params.get("device", "auto") == "auto"
                                   for name, params in asked)
    except GlassboxError:  # an unknown method: the job will fail with its reason
        return False


Runner = Callable[[JobContext], RunRecord]
RUNNERS: dict[str, Runner] = {}


def register_runner(kind: str, runner: Runner) -> None:
    RUNNERS[kind] = runner


def explain_job(model: LoadedModel, name: str, version: int, instances: np.ndarray,
                parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """One method, as the API asks for it: ``parameters`` holds ``method`` (required), ``target``
    (an int, one per instance, or None for the predicted class) and the method's own parameters;
    array parameters (``background``, ``baseline_array``) as nested lists. See `explain_methods_job`."""
    given = dict(parameters or {})
    method_name = given.pop("method", None)
    if not isinstance(method_name, str):
        raise UsageError("parameters.method is required (e.g. \"integrated_gradients\").")
    target = given.pop("target", None)
    return explain_methods_job(model, name, version, instances, [(method_name, given)], target)


def explain_methods_job(model: LoadedModel, name: str, version: int, instances: np.ndarray,
                        methods: list[tuple[str, dict[str, Any]]], target: Any = None, *,
                        rows: list[int] | None = None, shown: list[int] | None = None,
                        labels: np.ndarray | None = None, sign: str = "all",
                        metrics: list[tuple[str, dict[str, Any]]] | None = None, masks: np.ndarray | None = None,
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check an explain request against the model and its methods now (a bad request is refused
    when submitted, not when run): the job's params, its arrays and its title.

    ``instances`` [N, ...] are the rows explained; ``rows`` their indices in the page's batch,
    ``shown`` the ones whose maps are drawn, ``labels`` [N] their labels if known (all as the
    Output page saves them). Method ``i``'s array parameters travel as arrays ``"{i}/{key}"``.
    ``metrics`` (name, parameters) are measured on every method's maps in the same job (``masks``
    [N, ...]: ground truth for the localisation metrics), as the Quality tab shows them.
    """
    from explain.output.methods import get_method
    from explain.output.metrics import get_metric

    if not methods:
        raise UsageError("Choose at least one method.")
    if target is not None and not (isinstance(target, int) or (
            isinstance(target, list) and all(isinstance(t, int) for t in target))):
        raise UsageError("parameters.target must be an integer, a list of integers or null.")
    if isinstance(target, list) and len(target) != len(instances):
        raise UsageError(f"parameters.target has {len(target)} entries for {len(instances)} instances.")
    model.as_tensor(instances)  # IncompatibleInput: the wrong shape for this model
    arrays: dict[str, np.ndarray] = {"inputs": instances}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    listed = []
    for i, (method_name, parameters) in enumerate(methods):
        method = get_method(method_name)
        reason = method.incompatibility(model)
        if reason:
            raise UsageError(reason)
        given, own = dict(parameters or {}), {}
        for key, spec in method.params.items():
            if spec.kind == "array" and isinstance(given.get(key), list):
                own[key] = model_array(model, given.pop(key), key)
            elif spec.kind == "array" and isinstance(given.get(key), np.ndarray):  # from a page's upload widget
                own[key] = given.pop(key)
            elif spec.kind == "array":
                given.pop(key, None)  # None: the method's default
        resolve_params(method.params, {**given, **own})
        method.check_per_input(given.get("per_input"), len(instances))  # a record's per-input values
        arrays.update({f"{i}/{key}": value for key, value in own.items()})
        listed.append({"method": method.name, "params": given})
    measured = []
    for metric_name, metric_params in metrics or []:
        metric = get_metric(metric_name)
        if not metric.is_compatible(model):
            raise UsageError(f"Metric {metric.name!r} does not fit this model.")
        if metric.needs_masks and masks is None:
            raise UsageError(f"Metric {metric.name!r} needs ground-truth masks.")
        resolve_params(metric.params, dict(metric_params or {}))
        measured.append({"metric": metric.name, "params": dict(metric_params or {})})
    if masks is not None:
        arrays["masks"] = np.asarray(masks)
    n = len(instances)
    names = [m["method"] for m in listed]
    params = {"model": name, "version": version, "method": ",".join(names), "target": target, "methods": listed,
              "rows": list(map(int, rows if rows is not None else range(n))),
              "shown": list(map(int, shown if shown is not None else range(n))), "sign": sign, "metrics": measured}
    return params, arrays, f"{', '.join(names)} on {n} inputs of {name}@v{version}"


def rerun_job(model: LoadedModel, run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved Output run's explanation asked again (``model``: its version, loaded): the same inputs,
    methods with their recorded parameters (each input with the values it used: ``per_input``,
    `explain.attribution.Attribution`), target, rows, labels and sign, as an ``explain`` job
    that computes afresh (``fresh``: never the attribution cache) and whose run names the one it
    re-runs (``summary["rerun_of"]``). Its params, arrays and title, as `explain_methods_job`."""
    info = run.info
    if info.page != "output":
        raise UsageError(f"Run {info.id} is a {info.page} run; only Output runs can be re-run.")
    rows = run.inputs.get("rows")
    params, arrays, title = explain_methods_job(
        model, info.model, info.version, run.inputs["inputs"],
        [(m, dict(info.params.get(m, {}))) for m in info.summary.get("methods", [])], info.target,
        rows=None if rows is None else [int(r) for r in rows], shown=info.summary.get("shown"),
        labels=run.inputs.get("labels"), sign=info.summary.get("sign", "all"))
    params.update(fresh=True, rerun_of=info.id)
    return params, arrays, f"Re-run of {info.id}: {title}"


def model_array(model: LoadedModel, instances: Any, what: str = "instances") -> np.ndarray:
    """JSON nested lists as a model-ready array: int64 ids for text, float32 otherwise."""
    dtype = np.int64 if model.spec.dtype.startswith("int") else np.float32
    try:
        array = np.asarray(instances, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{what} is not a rectangular array of numbers.") from None
    if not array.size:
        raise UsageError(f"{what} is empty.")
    if array.ndim == len(model.spec.input_shape):
        array = array[None]
    if array.ndim != len(model.spec.input_shape) + 1 or not len(array):
        raise UsageError(f"{what} has shape {list(array.shape)}; this model takes "
                         f"[N, {', '.join(map(str, model.spec.input_shape))}].")
    if dtype == np.float32 and not np.isfinite(array).all():
        raise UsageError(f"{what} holds NaN or infinite values.")
    if dtype == np.int64 and (np.asarray(instances, dtype=np.float64).reshape(array.shape) != array).any():
        raise UsageError(f"{what} holds numbers that are not whole; this model takes token ids.")
    if dtype == np.int64:  # ids outside the vocabulary: refused before they join anyone's batch
        from explain.errors import IncompatibleInput
        from explain.inputs.reading import as_token_ids

        try:
            as_token_ids(array, model.spec, what)
        except IncompatibleInput as exc:
            raise UsageError(exc.reason, exc.hint) from None
    return array


def run_explain(ctx: JobContext) -> RunRecord:
    """The job's methods on its inputs, then its metrics on their maps, saved as an Output run (as
    the Output page shows it)."""
    from explain.output.methods import get_method
    from explain.output.metrics.quality import evaluate_quality

    p = ctx.job.params
    model = ctx.model(p["model"], int(p["version"]))
    inputs = ctx.inputs["inputs"]  # [N, *input_shape]
    methods = p.get("methods") or [{"method": p["method"], "params": p.get("params", {})}]
    metrics = p.get("metrics") or []
    target = np.asarray(p["target"]) if isinstance(p.get("target"), list) else p.get("target")
    steps = len(methods) * (1 + len(metrics))  # one bar: each method's batches, then each metric's

    def step(k: int):
        def progress(done: int, total: int) -> None:
            ctx.progress(round(1000 * (k + done / max(total, 1)) / steps), 1000)
        return progress

    attrs = []
    for i, entry in enumerate(methods):
        if i:
            ctx.between_chunks()  # one method done, no hook on the model: a batch job may pause here
        arrays = {k.split("/", 1)[1]: v for k, v in ctx.inputs.items() if k.startswith(f"{i}/")}
        # the process-wide cache (keyed by model, inputs, method, parameters and target): a request
        # that only changes its metrics does not explain again
        attrs.append(get_method(entry["method"]).explain(model, inputs, target=target, progress=step(i),
                                                         use_cache=not p.get("fresh", False),
                                                         **entry.get("params", {}), **arrays))
    if metrics:
        ctx.between_chunks()
    order = {(a.method, m["metric"]): len(methods) + i * len(metrics) + j
             for i, a in enumerate(attrs) for j, m in enumerate(metrics)}
    quality = evaluate_quality(model, attrs, [m["metric"] for m in metrics], ctx.inputs.get("masks"),
                               {m["metric"]: m.get("params", {}) for m in metrics},
                               progress=lambda method, metric: step(order[(method, metric)])) if metrics else None
    probs = model.predict_proba(inputs)  # [N, K]
    rows = p.get("rows") or list(range(len(inputs)))
    shown = p.get("shown") if p.get("shown") is not None else list(range(len(inputs)))
    params = {a.method: {k: v for k, v in a.params.items() if not isinstance(v, np.ndarray)} for a in attrs}
    record = output_record(p["model"], int(p["version"]), model, inputs, rows, shown, probs,
                           ctx.inputs.get("labels"), attrs, p.get("target"), p.get("sign", "all"), params, quality)
    if p.get("rerun_of"):  # `rerun_job`: the run says which one it re-ran
        record = replace(record, title=f"Re-run of {p['rerun_of']}: {record.title}",
                         summary={**record.summary, "rerun_of": p["rerun_of"]})
    return record


register_runner("explain", run_explain)


def run_dataset(ctx: JobContext) -> RunRecord:
    """Every shard of the job's dataset (`explain.dataset.job.run_dataset_job`), saved as a Dataset run."""
    from explain.dataset.job import run_dataset_job

    p = ctx.job.params
    model = ctx.model(p["model"], int(p["version"]))

    def publish(arrays: dict[str, np.ndarray]) -> None:  # after each shard but the last: between chunks
        ctx.publish(arrays)
        ctx.between_chunks()

    return run_dataset_job(model, p, ctx.inputs, ctx.progress, publish,
                           lambda: ctx.ws.registry.file(ctx.job.owner_actor, p["model"], int(p["version"]))[0])


register_runner("dataset", run_dataset)


def run_report(ctx: JobContext) -> RunRecord:
    """The report the job describes (`explain.report.job.run_report_job`), saved as a report run;
    with ``review``, the version's decisions and comments as they are when it is built."""
    from explain.report.job import carried_runs, run_report_job
    from explain.report.review import review_record
    from explain.workspace.run_kinds import read_run

    p = ctx.job.params
    model = ctx.model(p["model"], int(p["version"]))
    review = None
    if p.get("review"):
        record = review_record(ctx.ws, ctx.job.owner_actor, p["model"], int(p["version"]), run_id=p.get("review_run"))
        review = record if record.decisions or record.comments else None  # nothing reviewed: no section
    carried = {kind: read_run(run) for kind, run in carried_runs(p, ctx.inputs).items()}
    return run_report_job(model, p, ctx.inputs, ctx.progress, review, carried)


register_runner("report", run_report)


def run_importance(ctx: JobContext) -> RunRecord:
    """Layer importance of the job's inputs (`explain.output.importance_job.run_importance_job`)."""
    from explain.output.importance_job import run_importance_job

    p = ctx.job.params
    return run_importance_job(ctx.model(p["model"], int(p["version"])), p, ctx.inputs, ctx.progress)


register_runner("importance", run_importance)


def run_drift(ctx: JobContext) -> RunRecord:
    """Attribution drift over the job's checkpoints (`explain.training.drift_job.run_drift_job`)."""
    from explain.training.drift_job import run_drift_job

    p = ctx.job.params
    return run_drift_job(ctx.model(p["model"], int(p["version"])), p, ctx.inputs, ctx.progress)


register_runner("drift", run_drift)
register_runner("compare", run_compare)  # two versions compared (`explain.compare.job`)
register_runner("generate", run_generation)  # a causal LM's generation explained (`explain.generation.job`)
