"""What each job kind runs: a function from a `JobContext` to the `RunRecord` the job saves.

    RUNNERS["explain"]   methods on a batch of inputs -> an Output run (`explain.output.explain_job`:
                         `explain_methods_job` builds it; `rerun_job` asks a saved Output run again, afresh)
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
from dataclasses import dataclass

import numpy as np

from explain.compare.job import run_compare
from explain.generation.job import run_generation
from explain.model import LoadedModel
from explain.output.explain_job import explain_job, explain_methods_job, model_array, rerun_job  # noqa: F401 - callers' name
from explain.progress import ProgressFn
from explain.service.models import ModelCache
from explain.workspace import RunRecord, Workspace
from explain.workspace.jobs import JobInfo
from explain.workspace.records import output_record
from explain.workspace.reruns import as_rerun


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
    return as_rerun(record, p)  # `rerun_job`: the run says which one it re-ran


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
    return run_drift_job(ctx.model(p["model"], int(p["version"])), p, ctx.inputs, ctx.progress,
                         workspace=ctx.ws, actor=ctx.job.owner_actor)  # each checkpoint through the role check


register_runner("drift", run_drift)
register_runner("compare", run_compare)  # two versions compared (`explain.compare.job`)
register_runner("generate", run_generation)  # a causal LM's generation explained (`explain.generation.job`)
