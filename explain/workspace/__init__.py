"""The team workspace: accounts and roles, the model registry, saved runs, review and audit.

    ws = open_workspace()                      # $GLASSBOX_DATABASE_URL or SQLite in $GLASSBOX_HOME
    v = ws.registry.register(actor, "shapes", data, "model.safetensors", alias="candidate")
    run = ws.runs.save(actor, RunRecord(page="output", model="shapes", version=v.version, ...))
    ws.review.post(reviewer, run.id, "Looks at the background", anchor_kind="input", anchor="3")
    ws.review.decide(reviewer, "shapes", v.version, "approve", move_alias="production")
    job = ws.jobs.submit(actor, "explain", params, inputs={"inputs": x})   # run by a worker

Every method takes the `Actor` asking and checks its role (`roles`) against the database
before it reads or writes; every write adds its audit row in the same transaction.
The library never imports Streamlit: ``ui/workspace.py`` is the page glue.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from explain.lazy import lazy_exports

if TYPE_CHECKING:
    from explain.workspace.registry import VersionInfo
    from explain.workspace.roles import Action, Actor
    from explain.workspace.runs import RunInfo, RunRecord, SavedRun
    from explain.workspace.workspace import SEEDER, Workspace, open_workspace

#: what ``from explain.workspace import X`` gives, resolved on first use, so that a light module of this
#: package (`peek`, `roles`) is imported without SQLAlchemy (the app's first paint)
_EXPORTS = {
    "Action": "explain.workspace.roles",
    "Actor": "explain.workspace.roles",
    "RunInfo": "explain.workspace.runs",
    "RunRecord": "explain.workspace.runs",
    "SavedRun": "explain.workspace.runs",
    "VersionInfo": "explain.workspace.registry",
    "SEEDER": "explain.workspace.workspace",
    "Workspace": "explain.workspace.workspace",
    "open_workspace": "explain.workspace.workspace",
}

__all__ = ["SEEDER", "Action", "Actor", "RunInfo", "RunRecord", "SavedRun", "VersionInfo", "Workspace", "open_workspace"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
