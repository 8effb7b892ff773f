"""Attack A1 on the workspace library's permissions, as a member would try them."""
from __future__ import annotations

import pytest

from explain.errors import PermissionDenied
from explain.workspace import Actor

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:ops", operator=True)


def test_an_account_named_as_the_operator_may_not_cancel_its_jobs(workspace):
    """The command line acts as ``cli:<login>`` (`cli_actor`); an account of that name (a viewer) was
    taken for the job's owner, as only the name and the token flag were compared."""
    workspace.users.add(OP, "admin", "admin")
    job = workspace.jobs.submit(OP, "test", {}, title="the operator's job")
    workspace.users.add(OP, "cli:ops", "viewer")
    with pytest.raises(PermissionDenied):
        workspace.jobs.cancel(Actor("cli:ops"), job.id)
    assert workspace.jobs.get(Actor("admin"), job.id).status == "queued"
    assert workspace.jobs.cancel(OP, job.id).status == "cancelled"  # the operator itself still may
