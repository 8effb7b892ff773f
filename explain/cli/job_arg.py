"""A subcommand's work as a job of the workspace's queue (`explain.service.client`): the model
registered, the job submitted as the operator, run in this process, or with
``GLASSBOX_EXTERNAL_WORKER=1`` by the team's workers, and its saved run returned."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from explain.model import LoadedModel
from explain.workspace import SavedRun
from sample_models import SAMPLE_NAMES

#: (registry name, version) -> the job's params, arrays and title (checked before anything is queued)
BuildJob = Callable[[str, int], tuple[dict[str, Any], dict[str, np.ndarray], str]]


def run_as_job(model_arg: str, model: LoadedModel, kind: str, build: BuildJob,
               priority: str = "interactive") -> SavedRun:
    """Register ``model`` (the MODEL argument's file), queue ``build(name, version)`` as a ``kind``
    job and return its saved run.

    Raises:
        QueueFull: the operator already has ``GLASSBOX_MAX_JOBS`` jobs queued or running (exit 3).
        JobNotDone: the job failed (its reason) or was cancelled, e.g. on the Queue page.
    """
    from explain.cli.model_arg import model_file_arg
    from explain.cli.workspace_arg import cli_actor, cli_workspace
    from explain.config import external_worker
    from explain.service.client import finished_run, model_name_from_file, register_model, run_here, submit, wait

    ws, actor = cli_workspace(), cli_actor()
    data, filename = model_file_arg(model_arg)
    sample = model_arg in SAMPLE_NAMES and not Path(model_arg).exists()
    version = register_model(ws, actor, model, data, filename,
                             model_arg if sample else model_name_from_file(Path(model_arg).name))
    params, arrays, title = build(version.name, version.version)
    job = submit(ws, actor, kind, params, title=title, inputs=arrays, priority=priority)
    job = wait(ws, actor, job.id) if external_worker() else run_here(ws, job.id, loaded=model)
    return finished_run(ws, actor, job)
