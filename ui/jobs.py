"""The job queue in the app: the embedded worker, the queue table with progress and Cancel, and
submitting the sidebar model's explanation as a job (the Queue page).

Progress and results live in the workspace's ``jobs`` table, so every session sees the same
queue; the table redraws itself every two seconds while a job is queued or running.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from explain.config import external_worker
from explain.service.runners import explain_job
from explain.workspace import Action
from explain.workspace.jobs import JobInfo
from ui import state
from ui import workspace as team

REFRESH_S = 2.0


@st.cache_resource(show_spinner=False)
def _embedded_worker(url: str, home: str):
    from explain.service.worker import start_embedded

    return start_embedded(team.workspace())


def ensure_worker() -> None:
    """Start this server's queue worker thread once, unless ``GLASSBOX_EXTERNAL_WORKER=1``."""
    if not external_worker():
        ws = team.workspace()
        _embedded_worker(ws.url, str(ws.home))


def submit_explanation(model, inputs, method: str, params: dict[str, Any], target: int | None,
                       priority: str = "interactive") -> JobInfo:
    """Queue ``method`` on ``inputs`` [N, ...] of the current model (registered first if it is an upload)."""
    version = team.current_version(model, register=True)
    if version is None:
        raise PermissionError("This model is not in the workspace and you may not register it.")
    job_params, arrays, title = explain_job(model, version.name, version.version, inputs,
                                            {"method": method, "target": target, **params})
    return team.workspace().jobs.submit(team.actor(), "explain", job_params, title=title, inputs=arrays,
                                        priority=priority)


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


def render_queue_button(model, inputs, methods: list[str], params_by_method: dict[str, dict[str, Any]],
                        target: int | None) -> None:
    """The Output page's "Queue as jobs": the same methods on the same inputs [N, ...] as interactive
    jobs (they survive a closed tab, every session sees them, each result is saved as a run)."""
    if not team.can(Action.SAVE_RUN):
        return
    if st.button("Queue as jobs", key="gb_output_queue",
                 help="Run these methods in the team's job queue; each result is saved as a run."):
        with state.error_boundary("Queueing the explanation"):
            st.session_state["gb_output_jobs"] = [
                submit_explanation(model, inputs, m, params_by_method.get(m, {}), target).id for m in methods]
    ids = st.session_state.get("gb_output_jobs")
    if ids:
        _render_followed(ids)


@st.fragment(run_every=REFRESH_S)
def _render_followed(ids: list[str]) -> None:
    ws, who = team.workspace(), team.actor()
    for job_id in ids:
        job = ws.jobs.get(who, job_id)
        if job.status == "done":
            st.caption(f"{job.title}: done, saved as run [{job.run}](/?run={job.run})")
            continue
        c1, c2 = st.columns([5, 1])
        c1.progress(job.progress, text=f"{job.title} · {job.status}" + (f" · {job.error}" if job.error else ""))
        if job.status in ("queued", "running"):
            c2.button("Cancel", key=f"gb_output_job_cancel_{job.id}", on_click=ws.jobs.cancel, args=(who, job.id))
