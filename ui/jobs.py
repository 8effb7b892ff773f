"""The job queue in the app: the embedded worker, submitting an explanation as a job and
following it with progress and Cancel (the Output page's one path), and the queue table (the
Queue page).

Progress and results live in the workspace's ``jobs`` table, so every session sees the same
queue; the table redraws itself every two seconds while a job is queued or running.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from explain.config import external_worker
from explain.digest import digest_array, digest_bytes
from explain.errors import GlassboxError
from explain.service.client import finished_run, submit, wait
from explain.service.runners import explain_methods_job
from explain.workspace import Action, SavedRun
from explain.workspace.jobs import JobInfo
from ui import workspace as team

REFRESH_S = 2.0


@st.cache_resource(show_spinner=False)
def _embedded_worker(url: str, home: str):
    from explain.service.worker import start_embedded

    return start_embedded(team.workspace())


def ensure_worker() -> None:
    """Start this server's queue worker threads once (``GLASSBOX_WORKERS`` of them, default one per GPU,
    else min(2, cores)), unless ``GLASSBOX_EXTERNAL_WORKER=1``."""
    if not external_worker():
        ws = team.workspace()
        _embedded_worker(ws.url, str(ws.home))


def registered_version(model):
    """The current model's registry version, registering an upload first (what every job names); a causal-LM
    sample, which the workspace's seed leaves out, is registered under its name the first time a job needs it."""
    version = team.current_version(model, register=True)
    if version is None:
        version = _registered_causal_lm_sample(model)
    if version is None:
        raise GlassboxError("This model is not in the workspace and could not be registered.")
    return version


def _registered_causal_lm_sample(model):
    """The current causal-LM sample's version, registered from its shipped zip (None: not one, or other weights)."""
    from explain.service.client import register_model
    from sample_models import CAUSAL_LM_SAMPLES, sample_file
    from ui import state

    name = state.current_sample_name()
    if name not in CAUSAL_LM_SAMPLES:
        return None
    data = sample_file(name).read_bytes()
    if digest_bytes(data) != model.sha256:
        return None
    return register_model(team.workspace(), team.actor(), model, data, f"{name}.zip", name)


def request_key(model, inputs, asked: list[tuple[str, dict[str, Any]]], target: int | None,
                metrics: list[tuple[str, dict[str, Any]]] = (), masks: np.ndarray | None = None) -> str:
    """What identifies one explanation request of a page: the model, the inputs [N, ...], the
    methods and the metrics with their parameters (arrays by digest), the masks and the target."""
    def plain(value):
        return digest_array(value) if isinstance(value, np.ndarray) else value

    def described(pairs):
        return [[name, sorted((k, plain(v)) for k, v in params.items())] for name, params in pairs]

    return digest_bytes(json.dumps([model.sha256, digest_array(inputs), described(asked), described(metrics),
                                    plain(masks), target], default=str).encode())


def submit_explain(model, inputs, asked: list[tuple[str, dict[str, Any]]], target: int | None, *,
                   rows: list[int] | None = None, shown: list[int] | None = None, labels=None,
                   sign: str = "all", priority: str = "interactive",
                   metrics: list[tuple[str, dict[str, Any]]] | None = None, masks=None) -> JobInfo:
    """Queue ``asked`` (method, parameters) on ``inputs`` [N, ...] of the current model, registered
    first if it is an upload, and ``metrics`` on their maps; the job's result is an Output run."""
    version = registered_version(model)
    job_params, arrays, title = explain_methods_job(model, version.name, version.version, inputs, asked, target,
                                                    rows=rows, shown=shown, labels=labels, sign=sign,
                                                    metrics=metrics, masks=masks)
    return submit(team.workspace(), team.actor(), "explain", job_params, title=title, inputs=arrays,
                  priority=priority)


def follow_job(job_id: str, label: str, on_partial: Callable[[dict[str, np.ndarray]], None] | None = None,
               ) -> tuple[JobInfo, SavedRun | None]:
    """Wait here for the job, drawing its progress with a Cancel button (``on_partial(arrays)``
    draws each partial result the worker publishes); the job as it ended and its saved run
    (None when it was cancelled, here or on the Queue page).

    Raises:
        JobNotDone: the job failed (its reason in the message).
    """
    ws, who = team.workspace(), team.actor()
    ensure_worker()
    bar, cancel_slot, partial_slot = st.empty(), st.empty(), st.empty()
    if cancel_slot.button("Cancel", key=f"gb_cancel_job_{job_id}"):  # the click ended the last wait
        ws.jobs.cancel(who, job_id)
    drawn = {"partial": None}

    def draw(job: JobInfo) -> None:
        if job.status == "queued":
            waiting = "start `python -m explain worker`" if external_worker() else "the worker is busy"
            bar.progress(0.0, text=f"{label}: queued as job {job.id} ({waiting})")
        elif job.status == "running":
            bar.progress(job.progress, text=f"{label}: {round(100 * job.progress)}% (job {job.id})")
            if on_partial is not None and job.partial_sha256 and job.partial_sha256 != drawn["partial"]:
                drawn["partial"] = job.partial_sha256
                with partial_slot.container():  # below the bar and Cancel, redrawn in place
                    on_partial(ws.jobs.partial(job))

    job = wait(ws, who, job_id, on_progress=draw)
    bar.empty()
    cancel_slot.empty()
    partial_slot.empty()
    if job.status == "cancelled":
        return job, None
    return job, finished_run(ws, who, job)


def submit_dataset(model, dataset, method: str, params: dict[str, Any], target, shard_rows: int,
                   engine: str) -> JobInfo:
    """Queue a dataset-wide run of the current model (registered first if it is an upload) as a batch job."""
    from explain.dataset.job import dataset_job

    version = registered_version(model)
    job_params, arrays, title = dataset_job(model, version.name, version.version, dataset, method, params, target,
                                            shard_rows, engine)
    return submit(team.workspace(), team.actor(), "dataset", job_params, title=title, inputs=arrays,
                  priority="batch")


def submit_report(name: str, version: int, model, inputs, *, labels=None, logs=(), checkpoints=(),
                  methods=("integrated_gradients",), method_params=None, review_run: str | None = None,
                  title: str | None = None, generation: SavedRun | None = None) -> JobInfo:
    """Queue the HTML report of ``name@v<version>`` (``model`` loaded) on ``inputs`` [N, ...]; ``logs``
    and ``checkpoints`` as paths; the version's review goes in as it is when the report is built;
    ``generation``: a saved generation run, drawn as the report's Generation section."""
    from explain.report.job import file_as_data, log_as_data, report_job

    job_params, arrays, job_title = report_job(
        model, name, version, inputs, labels=labels, logs=[log_as_data(p) for p in logs],
        checkpoints=[file_as_data(p) for p in checkpoints], methods=methods, method_params=method_params,
        review=True, review_run=review_run, title=title, invocation={"page": "app"}, generation=generation)
    return submit(team.workspace(), team.actor(), "report", job_params, title=job_title, inputs=arrays,
                  priority="interactive")


def submit_importance(model, inputs, depth: int, steps: int) -> JobInfo:
    """Queue the Structure page's Rank layers on ``inputs`` [N, ...] as an interactive job (an importance run)."""
    from explain.output.importance_job import importance_job

    version = registered_version(model)
    job_params, arrays, title = importance_job(model, version.name, version.version, inputs, depth=depth, steps=steps)
    return submit(team.workspace(), team.actor(), "importance", job_params, title=title, inputs=arrays,
                  priority="interactive")


def submit_drift(model, checkpoints: list[tuple[str, bytes]], inputs, steps: int) -> JobInfo:
    """Queue the Training page's attribution drift over ``checkpoints`` (name, bytes) as an interactive job."""
    from explain.training.drift_job import drift_job

    version = registered_version(model)
    job_params, arrays, title = drift_job(model, version.name, version.version, checkpoints, inputs, steps=steps)
    return submit(team.workspace(), team.actor(), "drift", job_params, title=title, inputs=arrays,
                  priority="interactive")


def submit_compare(info_a, info_b, model_a, model_b, inputs, method: str, params: dict[str, Any]) -> JobInfo:
    """Queue the Compare page's comparison of two registry versions (``info_a`` / ``info_b``, their
    models loaded) on ``inputs`` [N, ...] as an interactive ``compare`` job, their training logs with it."""
    from explain.compare.job import JOB_KIND, compare_job, version_logs

    ws, who = team.workspace(), team.actor()
    job_params, arrays, title = compare_job(model_a, model_b, info_a.ref, info_b.ref, inputs, method, params,
                                            sizes=(info_a.size, info_b.size),
                                            logs=(version_logs(ws, who, info_a), version_logs(ws, who, info_b)))
    return submit(ws, who, JOB_KIND, job_params, title=title, inputs=arrays, priority="interactive")


def submit_generation(model, prompts: list[str], *, continuations: list[str] | None = None, max_new_tokens: int,
                      method: str, steps: int, baseline: str, quality: bool, granularity: str = "token",
                      sampling=None, chat: bool = False, chats: list | None = None, selected_step: int = 0,
                      contrast: str | None = None) -> JobInfo:
    """Queue the Generate page's explanation of ``prompts`` (or their given ``continuations``) by the current
    causal LM (registered first if it is an upload) as an interactive ``generate`` job (a generation run);
    ``sampling`` (`explain.generation.sampling.Sampling`), ``chat`` / ``chats``, the ``selected_step`` and its
    ``contrast`` as `generation_job` takes them."""
    from explain.generation.job import JOB_KIND, generation_job

    version = registered_version(model)
    job_params, arrays, title = generation_job(model, version.name, version.version, prompts,
                                               continuations=continuations, max_new_tokens=max_new_tokens,
                                               method=method, steps=steps, baseline=baseline, quality=quality,
                                               granularity=granularity, sampling=sampling, chat=chat, chats=chats,
                                               selected_step=selected_step, contrast=contrast or None)
    return submit(team.workspace(), team.actor(), JOB_KIND, job_params, title=title, inputs=arrays,
                  priority="interactive")


def follow_request(store: str, key: str, submit_job: Callable[[], JobInfo], label: str) -> SavedRun | None:
    """The saved run answering request ``key``: submitted once (``submit_job()``; the job's id kept in
    ``st.session_state[store]``, so a rerun follows the same job), followed here with its progress and
    Cancel. None when it was cancelled (said so; the next run asks again).

    Raises:
        JobNotDone: the job failed (its reason in the message; the next run asks again).
    """
    from explain.service.client import JobNotDone

    followed = st.session_state.setdefault(store, {})
    if key not in followed:
        followed[key] = submit_job().id
    try:
        job, run = follow_job(followed[key], label)
    except JobNotDone:
        followed.pop(key, None)
        raise
    if run is None:
        followed.pop(key, None)
        st.info(f"{label}: cancelled.")
    return run


def jobs_frame(jobs: list[JobInfo]) -> pd.DataFrame:
    """Who, what, how far: one row per job, in the order the workers take them."""
    return pd.DataFrame([{"job": j.id, "who": j.owner, "what": j.title, "priority": j.priority, "status": j.status,
                          "progress": round(100 * j.progress), "tries": j.attempts, "run": j.run or "",
                          "note": j.error or ""} for j in jobs],
                        columns=["job", "who", "what", "priority", "status", "progress", "tries", "run", "note"])


def _queue_body() -> None:
    ws, who = team.workspace(), team.actor()
    jobs = ws.jobs.list(who, limit=50)
    if not jobs:
        st.info("The queue is empty.")
        return
    st.dataframe(jobs_frame(jobs), hide_index=True, width="stretch", key="gb_jobs_table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100,
                                                                            format="%d%%")})
    is_admin = team.can(Action.MANAGE_USERS)
    for job in jobs:
        if job.status not in ("queued", "running") or not (job.owner == who.name or is_admin):
            continue
        c1, c2 = st.columns([5, 1])
        c1.progress(job.progress, text=f"{job.title} · {job.status}"
                    + (" · cancelling…" if job.cancel_requested else ""))
        # A callback: it runs before the redraw, so the table below already shows the cancel.
        c2.button("Cancel", key=f"gb_job_cancel_{job.id}", on_click=ws.jobs.cancel, args=(who, job.id))
    done = [j for j in jobs if j.status == "done" and j.owner == who.name][:5]
    for job in done:
        st.caption(f"{job.title}: saved as run [{job.run}](/?run={job.run})")


@st.fragment(run_every=REFRESH_S)
def render_queue() -> None:
    """The queue table, progress bars and Cancel buttons; redrawn every `REFRESH_S` seconds."""
    _queue_body()
