"""Attack A1 (stop 31) on who is who: the per-caller job limit, sign-in cookies and the first paint's
account peek. Each was left written up by the last stop's attackers."""
from __future__ import annotations

import pytest

from explain.errors import QueueFull
from explain.workspace import Actor

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:ops", operator=True)


def test_the_job_limit_counts_each_submitting_actor_not_each_name(workspace):
    """A token named like a user shared that user's count: it filled alice's quota (and alice's jobs
    filled the token's). The limit counts by name, token flag and operator flag, as `Jobs.cancel` compares."""
    workspace.users.add(OP, "admin", "admin")
    workspace.users.add(OP, "alice", "editor")
    workspace.users.add_token(OP, "alice", "editor")  # a token another admin named like the user
    token, user = Actor("alice", token=True), Actor("alice")
    for _ in range(2):
        workspace.jobs.submit(token, "test", {}, max_active=2)
    with pytest.raises(QueueFull, match="the limit is 2"):
        workspace.jobs.submit(token, "test", {}, max_active=2)
    mine = [workspace.jobs.submit(user, "test", {}, max_active=2) for _ in range(2)]  # was QueueFull
    assert [j.owner_actor for j in mine] == [user, user]
    with pytest.raises(QueueFull, match="alice already has 2 jobs"):
        workspace.jobs.submit(user, "test", {}, max_active=2)
    workspace.users.add(OP, "cli:ops", "editor")  # an account named as the operator's tools
    workspace.jobs.submit(OP, "test", {}, max_active=1)
    workspace.jobs.submit(Actor("cli:ops"), "test", {}, max_active=1)  # was QueueFull: the operator's count
    assert sorted(j.owner_actor.operator for j in workspace.jobs.list(OP)) == [False] * 5 + [True]


def test_the_first_paint_peek_does_not_wait_seconds_on_a_locked_database(tmp_path, monkeypatch):
    """A rollback-journal database whose writer holds its lock: the peek waited its 5 s busy timeout before
    answering None, so the first paint waited 5 s with nothing drawn. It now waits at most a fraction of a
    second (then None: the workspace itself answers)."""
    import sqlite3

    import explain.workspace.peek as peek

    plain = tmp_path / "plain.db"
    conn = sqlite3.connect(plain, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO users VALUES (1)")
    waits, connect = [], sqlite3.connect

    def recording(*args, **kwargs):
        waits.append(kwargs.get("timeout", 5.0))  # sqlite3's own default is 5 s
        return connect(*args, **kwargs)

    monkeypatch.setattr(peek.sqlite3, "connect", recording)
    assert peek.has_accounts(f"sqlite:///{plain}") is True
    conn.execute("BEGIN EXCLUSIVE")  # a writer mid-commit: readers of a rollback journal wait
    try:
        assert peek.has_accounts(f"sqlite:///{plain}") is None
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert len(waits) == 2 and max(waits) <= peek.PEEK_WAIT_S <= 0.25, waits
