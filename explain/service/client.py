"""Asking the queue and waiting for the answer: the one path by which the pages (Output, Dataset,
the reports of the Overview and Saved runs), the CLI (``attribute``, ``evaluate``, ``batch``,
``report``) and the HTTP API get their explanations, quality figures, dataset runs and reports.

    version = register_model(ws, actor, model, data, filename, name)   # the job names a registry version
    job = submit(ws, actor, "explain", params, inputs=arrays, priority="interactive")  # the one way in
    job = run_here(ws, job.id)            # a CLI with no team worker: this process is the worker
    job = wait(ws, actor, job.id, on_progress=draw)   # a page or the API: a worker runs it
    run = finished_run(ws, actor, job)    # the saved run, or `JobNotDone` with the job's reason

Whoever runs the job, it is claimed, heart-beaten, cancellable and saved under its id exactly as
`explain.service.worker.Worker` does it, so a page's, a CLI's and an API caller's results are
saved runs alike and every session sees their progress on the Queue page.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from explain.config import max_jobs_per_caller
from explain.errors import GlassboxError, UsageError
from explain.model import LoadedModel
from explain.workspace import Actor, SavedRun, Workspace
from explain.workspace.jobs import ACTIVE, JobInfo
from explain.workspace.registry import VersionInfo

#: Where a model's spec came from when the file alone does not give it back: it is stored with
#: the version, so a worker that loads the version from the registry feeds it the same way.
SPEC_NOT_IN_FILE = ("explicit", "inputs")


class JobNotDone(GlassboxError):
    """The job ended without a result: failed (with its reason) or cancelled."""

    def __init__(self, job: JobInfo):
        reason = job.error or ("cancelled" if job.status == "cancelled" else "no reason given")
        super().__init__(f"Job {job.id} {job.status}: {reason}")
        self.job = job


def submit(ws: Workspace, actor: Actor, kind: str, params: dict[str, Any], *, title: str = "",
           inputs: dict[str, np.ndarray] | None = None, priority: str = "batch",
           max_active: int | None = None) -> JobInfo:
    """Queue a ``kind`` job for ``actor``: the one way a page (`ui.jobs`, `ui.run_view`), the API
    and the CLI (`cli.job_arg`, `runs rerun`) submit, so every caller meets the same checks.

    ``params`` / ``inputs`` / ``title`` come from the kind's builder, which checks the request
    against the model before anything is queued (`runners.explain_methods_job`, `explain_job`,
    `rerun_job`, `dataset.job.dataset_job`, `report.job.report_job`); here the kind must have a
    runner, and ``actor`` may have at most ``max_active`` jobs queued or running (default
    `explain.config.max_jobs_per_caller`, ``GLASSBOX_MAX_JOBS``; an override is for tests and
    benchmarks). `Jobs.submit` checks the role (``SAVE_RUN``) and the priority.

    Raises:
        UsageError: no runner for ``kind``.
        QueueFull: the caller already has the limit's number of jobs queued or running
            (exit 3 in the CLI, 429 in the API).
    """
    from explain.service.runners import RUNNERS  # here: the runners import the model loaders

    if kind not in RUNNERS:
        raise UsageError(f"Unknown job kind {kind!r}.", f"Choose one of {', '.join(sorted(RUNNERS))}.")
    limit = max_jobs_per_caller() if max_active is None else max_active
    return ws.jobs.submit(actor, kind, params, title=title, inputs=inputs, priority=priority, max_active=limit)


def register_model(ws: Workspace, actor: Actor, model: LoadedModel, data: bytes, filename: str,
                   name: str) -> VersionInfo:
    """The registry version of ``data`` (the file ``model`` was loaded from): found by its sha256,
    else registered as ``name`` with the spec the file does not carry (`SPEC_NOT_IN_FILE`)."""
    found = ws.registry.find_by_sha(actor, model.sha256)
    if found is not None:
        return found
    spec = model.spec.to_json().encode() if model.extra.get("spec_source") in SPEC_NOT_IN_FILE else None
    return ws.registry.register(actor, name, data, filename, spec_json=spec)


def model_name_from_file(filename: str) -> str:
    """A registry name from a file or folder name: its stem, in letters, digits and ``._-``."""
    stem = filename.rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".pt2", ".zip", ".pt", ".pth", ".ckpt", ".bin", ".jit", ".ts", ".torchscript"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._") or "model"
    return cleaned[:200]


def wait(ws: Workspace, actor: Actor, job_id: str, on_progress: Callable[[JobInfo], None] | None = None,
         timeout_s: float | None = None, poll_s: float = 0.25) -> JobInfo:
    """Poll the job until it ends (done, failed, cancelled); ``on_progress(job)`` after each look.

    Raises:
        TimeoutError: still queued or running after ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pause = 0.02
    while True:
        job = ws.jobs.get(actor, job_id)
        if on_progress is not None:
            on_progress(job)
        if job.status not in ACTIVE:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Job {job_id} did not finish in {timeout_s:.0f} s.")
        ws.jobs.wait_for_an_end(pause)  # a worker of this process that finishes wakes us at once
        pause = min(pause * 1.5, poll_s)


def run_here(ws: Workspace, job_id: str, loaded: LoadedModel | None = None) -> JobInfo:
    """Claim the queued job ``job_id`` and run it in this process, as a worker would (``loaded``:
    the job's model, already loaded here); if a worker took it first, wait for that worker. The
    job as it ended."""
    from explain.service.worker import Worker

    worker = Worker(ws, name=f"{socket.gethostname()}:{os.getpid()}:cli")
    if loaded is not None:
        worker.models.add(loaded)
    job = ws.jobs.claim(worker.name, only=job_id)
    if job is not None:
        worker.run_job(job)
    else:
        while ws.jobs.get_unchecked(job_id).status in ACTIVE:
            time.sleep(0.25)
    return ws.jobs.get_unchecked(job_id)


def finished_run(ws: Workspace, actor: Actor, job: JobInfo) -> SavedRun:
    """The run a finished job saved.

    Raises:
        JobNotDone: the job failed or was cancelled (its reason in the message).
    """
    if job.status != "done" or not job.run:
        raise JobNotDone(job)
    return ws.runs.open(actor, job.run)
