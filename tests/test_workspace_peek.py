"""`explain.workspace.peek.has_accounts` (the app's first paint: no SQLAlchemy before the first figure) gives the
answer `Users.any_accounts` gives for an SQLite workspace, creates no file, and says None where it cannot tell."""
from __future__ import annotations

import sqlite3

from explain.workspace import Actor, open_workspace
from explain.workspace.peek import has_accounts


def test_an_sqlite_workspace_is_read_as_the_workspace_reads_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    assert has_accounts(url) is False  # no database yet: nobody has an account
    assert not (tmp_path / "glassbox.db").exists()  # and the peek made none
    ws = open_workspace(url, tmp_path)
    try:
        assert has_accounts(url) is False and ws.users.any_accounts() is False
        ws.users.add(Actor("cli:tester", operator=True), "alice", "admin")
        assert has_accounts(url) is True and ws.users.any_accounts() is True
        assert has_accounts(f" sqlite+pysqlite:///{tmp_path / 'glassbox.db'} ") is True
    finally:
        ws.close()
    assert has_accounts(url) is True  # a server started again: no connection open, no -wal / -shm left


def test_what_it_cannot_read_is_left_to_the_workspace(tmp_path):
    sqlite3.connect(tmp_path / "other.db").close()  # a database without the workspace's tables
    (tmp_path / "text.db").write_text("not a database")
    for url in ("postgresql+psycopg://u@localhost/glassbox", "sqlite://", "sqlite:///:memory:",
                f"sqlite:///{tmp_path / 'other.db'}", f"sqlite:///{tmp_path / 'text.db'}",
                f"sqlite:///{tmp_path / 'glassbox.db'}?mode=ro", "not a url"):
        assert has_accounts(url) is None, url
