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


def test_a_sign_in_cookie_ends_with_its_account_generation(workspace):
    """A 14-day cookie named only its user: once alice's account was removed and a new alice added (someone
    else, or alice with a new password), the old cookie signed in as her; nothing short of rotating
    ``session_key`` revoked it. The cookie now carries the account's identity, checked on every read."""
    import time

    from explain.workspace.users import read_session, sign_session

    ws, key = workspace, "k" * 48
    ws.users.add(OP, "admin", "admin", "admin-pass-1")
    ws.users.add(OP, "alice", "editor", "alice-pass-1")
    first = ws.users.identity("alice")
    assert first == ws.users.credentials()["usernames"]["alice"]["identity"] == ws.users.identity("alice")
    cookie = sign_session(key, "alice", first, 14)
    assert ws.users.signed_in_as(key, cookie) == ("alice", first)
    assert ws.users.signed_in_as("another key", cookie) is None
    assert ws.users.signed_in_as(key, cookie, now=time.time() + 15 * 86400) is None  # expired
    payload, _, signature = cookie.partition(".")
    forged = read_session(key, cookie)
    assert forged == ("alice", first) and read_session(key, payload + "." + signature[::-1]) is None
    assert ws.users.signed_in_as(key, sign_session(key, "admin", first, 14)) is None  # another account's identity

    ws.users.remove(OP, "alice")
    assert ws.users.signed_in_as(key, cookie) is None
    ws.users.add(OP, "alice", "editor", "alice-pass-1")  # added again, same name and password
    assert ws.users.signed_in_as(key, cookie) is None  # was alice
    second = ws.users.identity("alice")
    renewed = sign_session(key, "alice", second, 14)
    assert second != first and ws.users.signed_in_as(key, renewed) == ("alice", second)

    ws.users.set_password(OP, "alice", "a-new-password")
    assert ws.users.signed_in_as(key, renewed) is None and ws.users.verify_password("alice", "a-new-password")
    assert ws.users.identity("alice") not in (first, second)

    ws.users.add(OP, "oidc", "viewer")  # no password: the row id and creation time alone
    oidc = sign_session(key, "oidc", ws.users.identity("oidc"), 14)
    ws.users.remove(OP, "oidc")
    ws.users.add(OP, "oidc", "viewer")  # SQLite may give the row the same id
    assert ws.users.signed_in_as(key, oidc) is None
    assert [e.action for e in ws.audit.rows(OP)].count("user.set_password") == 1


def test_a_signed_in_session_ends_when_its_account_is_added_again(home):
    """The page's side: a session signed in as alice reads the account on every run; once alice is removed
    and added again, the next run shows the sign-in form, not alice's pages."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    _, ws = home
    ws.users.add(Actor.local(), "ada", "admin", "admin-pass-1")
    ws.users.add(Actor("ada"), "alice", "editor", "alice-pass-1")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = "alice"
    at.run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("Signed in as **alice") for c in at.sidebar.caption)
    ws.users.remove(Actor("ada"), "alice")
    ws.users.add(Actor("ada"), "alice", "editor", "alice-pass-1")
    at.run()
    assert not at.exception, at.exception
    assert not any(c.value.startswith("Signed in as") for c in at.sidebar.caption)
    assert any(b.label == "Sign in" for b in at.button) or at.text_input, "no sign-in form"
    assert at.session_state["authentication_status"] is None


def test_the_cli_sets_a_password_and_ends_the_old_sign_ins(tmp_path, monkeypatch, capsys):
    import io
    import json
    import sys

    from explain.cli import main
    from explain.workspace import open_workspace
    from explain.workspace.users import sign_session

    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GLASSBOX_DATABASE_URL", raising=False)
    for argv, stdin in ((["users", "add", "alice", "--role", "admin"], "first-password\n"),
                        (["users", "set-password", "alice"], "second-password\n")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["name"] == "alice"
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["users", "set-password", "alice"]) == 2
    assert capsys.readouterr().err.strip() == "error: The password is shorter than 8 characters."
    ws = open_workspace(home=tmp_path / "home")
    try:
        assert ws.users.verify_password("alice", "second-password") and not ws.users.verify_password("alice", "first-password")
        old = sign_session(ws.session_key(), "alice", "an identity before the change", 14)
        assert ws.users.signed_in_as(ws.session_key(), old) is None
    finally:
        ws.close()


def test_turns_in_the_queue_are_taken_by_each_submitting_actor_not_each_name(workspace):
    """The queue's turns grouped jobs by owner name, so a token named like a user shared that user's turns:
    the user's third job came before the token's first. Each actor takes its own turn, as the limit counts."""
    workspace.users.add(OP, "admin", "admin")
    workspace.users.add(OP, "alice", "editor")
    workspace.users.add_token(OP, "alice", "editor")
    token, user = Actor("alice", token=True), Actor("alice")
    first = [workspace.jobs.submit(user, "test", {}, priority="batch") for _ in range(3)]
    second = workspace.jobs.submit(token, "test", {}, priority="batch")
    taken = [workspace.jobs.claim("w1").id for _ in range(4)]
    assert taken == [first[0].id, second.id, first[1].id, first[2].id]
