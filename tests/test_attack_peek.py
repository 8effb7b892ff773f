"""Attack A3 on `explain.workspace.peek.has_accounts` (the first paint's sign-in question): it must read the file
SQLAlchemy opens for the same URL, and answer None, never False, where it cannot tell. False skips the sign-in."""
from __future__ import annotations

import os
import sqlite3

from explain.workspace import Actor, open_workspace
from explain.workspace.peek import has_accounts


def _with_alice(url, home):
    ws = open_workspace(url, home)
    try:
        ws.users.add(Actor("cli:tester", operator=True), "alice", "admin")
    finally:
        ws.close()


def test_a_percent_encoded_path_is_the_file_sqlalchemy_opens(tmp_path):
    (tmp_path / "my data").mkdir()
    url = f"sqlite:///{tmp_path}/my%20data/glassbox.db"  # SQLAlchemy opens 'my data/glassbox.db'
    _with_alice(url, tmp_path)
    assert (tmp_path / "my data" / "glassbox.db").exists()
    assert has_accounts(url) is True  # was False: it looked for a folder named 'my%20data'


def test_a_tilde_is_not_the_home_folder_as_sqlalchemy_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd" / "~").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    url = "sqlite:///~/glassbox.db"  # pysqlite: os.path.abspath, no expanduser -> ./~/glassbox.db
    _with_alice(url, tmp_path)
    opened = tmp_path / "cwd" / "~" / "glassbox.db"
    assert not (tmp_path / "home" / "glassbox.db").exists()  # private_sqlite made no decoy in $HOME
    assert oct(opened.stat().st_mode & 0o777) == "0o600"  # ... and made the opened one private
    assert has_accounts(url) is True  # was False: it read $HOME/glassbox.db, absent


def test_a_path_it_cannot_look_at_is_none_never_false(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    assert has_accounts(f"sqlite:///{tmp_path / 'loop'}") is None  # was False (exists() hides ELOOP)
    assert has_accounts(f"sqlite:///{tmp_path / 'file' / 'glassbox.db'}") is None  # ENOTDIR
    assert has_accounts(f"sqlite:///{tmp_path / 'dangling'}") is False  # nothing there yet
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.db")
    assert has_accounts(f"sqlite:///{tmp_path / 'dangling'}") is False  # SQLite would create its target


def test_symlinked_locked_unflushed_and_damaged_workspaces(tmp_path):
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    _with_alice(url, tmp_path)
    (tmp_path / "link.db").symlink_to(tmp_path / "glassbox.db")
    assert has_accounts(f"sqlite:///{tmp_path / 'link.db'}") is True
    # a writer with its rows only in the WAL (no checkpoint) and its transaction open
    writer = sqlite3.connect(tmp_path / "glassbox.db", isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM users")  # uncommitted: readers still see alice
        assert has_accounts(url) is True
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    # a rollback-journal database locked exclusively by a writer: None (after the busy timeout), not False
    plain = tmp_path / "plain.db"
    conn = sqlite3.connect(plain, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO users VALUES (1)")
    conn.execute("BEGIN EXCLUSIVE")
    try:
        import explain.workspace.peek as peek
        assert peek.has_accounts(f"sqlite:///{plain}", timeout=0.05) is None
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    damaged = tmp_path / "damaged.db"
    data = (tmp_path / "glassbox.db").read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    assert has_accounts(f"sqlite:///{damaged}") in (True, None)
    assert os.path.getsize(tmp_path / "glassbox.db") == len(data)  # read-only: nothing written
