"""Red-team checks of protected aliases (explain.workspace.registry): an approver is named by
account name, so removing that account must take the name off every approver list; otherwise a
later account created under the same name (another person) could move the alias. SQLite and
PostgreSQL (`tests.workspace_db`)."""
from __future__ import annotations

import pytest

from explain.errors import PermissionDenied
from explain.workspace import Actor, RunRecord

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:tester", operator=True)


def test_a_removed_approvers_name_approves_nothing_when_reused(workspace):
    ws = workspace
    ws.users.add(OP, "ada", "admin")
    ws.users.add(OP, "paula", "reviewer")
    ws.users.add(OP, "rita", "reviewer")
    ws.registry.register(OP, "m", b"one", "m.safetensors", alias="production")
    ws.registry.register(OP, "m", b"two", "m.safetensors")
    run = ws.runs.save(OP, RunRecord(page="comparison", model="m", version=2, title="v2 vs production",
                                     params={"a": "m@v2", "b": "m@production"})).id
    ws.registry.protect(Actor("ada"), "m", "production", ["paula", "rita"])

    ws.users.remove(Actor("ada"), "paula")
    assert [p.approvers for p in ws.registry.protections(OP, "m")] == [["rita"]]
    ws.users.add(Actor("ada"), "paula", "reviewer")  # someone else, the same name
    with pytest.raises(PermissionDenied, match="only admins and its approvers"):
        ws.review.decide(Actor("paula"), "m", 2, "approve", "looks fine", move_alias="production",
                         comparison_run=run)
    assert ws.registry.resolve(OP, "m@production").version == 1
    ws.review.decide(Actor("rita"), "m", 2, "approve", "agreement 1.0", move_alias="production", comparison_run=run)
    assert ws.registry.resolve(OP, "m@production").version == 2
    with ws.core.db.transaction() as s:
        from sqlalchemy import select

        from explain.workspace.schema import AuditEntry
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "user.remove")).one()
        assert (entry.object_id, entry.after) == ("paula", {"approver_of_protected_aliases": ["m@production"]})
