"""A workspace read without SQLAlchemy, for the app's first paint (issue 21, no waiting).

Importing SQLAlchemy and the workspace's tables takes about a second of a fresh server's first script run,
before the page may draw anything (nothing is drawn while accounts exist). `has_accounts` answers that one
question for an SQLite workspace with the standard library's ``sqlite3``, read-only, and says when it cannot
tell (None: another database, an unusual URL, a file it cannot read): then the caller opens the workspace
(`explain.workspace.users.Users.any_accounts`, the answer this one must agree with:
``tests/test_workspace_peek.py``).
"""
from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote, unquote

#: an SQLite file URL as `explain.config.database_url` writes it (``sqlite:///PATH``), no query
_SQLITE_FILE = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?]+)")


#: how long the peek waits for a database a writer has locked (a rollback journal's commit; WAL readers do
#: not wait): briefly, as the first paint waits for it; past it the answer is None and the workspace answers
PEEK_WAIT_S = 0.1


def has_accounts(url: str, *, timeout: float = PEEK_WAIT_S) -> bool | None:
    """Whether the workspace at ``url`` has an account, read with ``sqlite3`` (read-only: no file is created)
    when ``url`` is an SQLite file; None (cannot tell here) for any other URL or any failure, a lock held
    past ``timeout`` seconds included. False only when the file SQLite would open does not exist."""
    found = _SQLITE_FILE.fullmatch(url.strip())
    if found is None:
        return None
    # the file SQLAlchemy's pysqlite opens: the URL's path percent-decoded, made absolute, no ~ expanded
    database = unquote(found["path"])
    if database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(os.path.abspath(database))
    try:
        path.stat()
    except FileNotFoundError:
        return False  # no database yet (or a dangling link SQLite would create): nobody has an account
    except (OSError, ValueError):  # a link loop, a file as a folder, no access: the workspace may exist
        return None
    try:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as conn:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()[0])
    except sqlite3.Error:  # no users table yet, a file that is no database, no read access, ...
        return None
