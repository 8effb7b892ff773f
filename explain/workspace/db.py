"""The workspace database: engine, migrations, short transactions.

SQLite (the default, ``$GLASSBOX_HOME/glassbox.db``) runs in WAL mode, so readers never
wait for a writer and never see half a transaction; every transaction starts with
``BEGIN IMMEDIATE`` so two writers queue on the lock (``busy_timeout``) instead of failing
half-way on an upgrade deadlock. The database file and its ``-wal`` / ``-shm`` files are
``0600`` (`explain.workspace.files`). Any other SQLAlchemy URL works the same way
(PostgreSQL through psycopg is the tested one). `migrate` brings a database, empty or
older, to the newest schema with Alembic; `open_engine` does it on every open.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from explain.errors import UsageError
from explain.workspace.files import private_sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATE_LOCK = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process never loses a commit
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_engine(url: str) -> Engine:
    """An engine for ``url``, its database migrated to the newest schema."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise UsageError(f"GLASSBOX_DATABASE_URL is not a database URL ({exc}).") from None
    on_disk = None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            on_disk = Path(os.path.abspath(parsed.database))  # the file pysqlite opens: no ~ expanded
            private_sqlite(on_disk)  # 0600 before SQLite opens it: its -wal and -shm files take its mode
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    migrate(engine)
    if on_disk is not None:
        private_sqlite(on_disk)  # the -wal / -shm files exist now
    return engine


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to Alembic's head revision.

    A database already at the head (most opens) is recognised with one query, without importing
    Alembic (about half a second of every CLI call)."""
    head = script_head()
    if head is not None:
        current = current_revision(engine)
        if current == head:
            return
        if current is None and engine.dialect.name == "sqlite" and (
                create_from_template(engine, head) or current_revision(engine) == head):
            return
    _alembic_upgrade(engine)


def _alembic_upgrade(engine: Engine) -> None:
    """Run Alembic's migrations up to the head on ``engine`` (one migrating process at a time)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATE_LOCK, engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # one migrating process at a time
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7433)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


#: The schema Alembic's migrations give a new SQLite database, as SQLite keeps it (`sqlite_statements`):
#: `create_from_template` runs it on a database without tables, instead of importing Alembic to run
#: every migration (about 2 of the 3 s a new workspace's first ``users list`` took).
#: tests/test_workspace_template.py pins it to the migrations; `write_sqlite_template` rewrites it.
SQLITE_TEMPLATE = MIGRATIONS / "sqlite_head.json"


def create_from_template(engine: Engine, head: str) -> bool:
    """Create the head schema in an SQLite database that has no tables yet from `SQLITE_TEMPLATE`;
    False (nothing done) when the template is for another revision or the database is not empty
    (another process created it first: the ``BEGIN IMMEDIATE`` makes it wait, then see it)."""
    import json

    try:
        template = json.loads(SQLITE_TEMPLATE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if template.get("revision") != head:
        return False
    with _MIGRATE_LOCK, engine.begin() as conn:
        if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
            return False
        for statement in template["statements"]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))
    return True


def sqlite_statements(engine: Engine) -> list[str]:
    """The statements that recreate an SQLite database's schema: its tables in the order SQLite keeps
    them (the indexes SQLite makes itself, for keys, come with their tables), then its indexes by name
    (Alembic's batch mode recreates a table's indexes in set order, which changes with the hash seed),
    then anything else."""
    with engine.connect() as conn:
        return list(conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, "
            "CASE type WHEN 'index' THEN name END, rowid"
        ).scalars())


def write_sqlite_template(path: Path = SQLITE_TEMPLATE) -> None:
    """Run every migration on a new in-memory SQLite database and write its schema to ``path``
    (after adding a migration: ``python -c "from explain.workspace.db import write_sqlite_template as w; w()"``)."""
    import json

    engine = create_engine("sqlite://")
    _alembic_upgrade(engine)
    template = {"revision": head_revision(), "statements": sqlite_statements(engine)}
    path.write_text(json.dumps(template, indent=1) + "\n", encoding="utf-8")


_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(.*?)\s*$", re.M)
_SIMPLE = re.compile(r"""^(None|"[\w.-]+"|'[\w.-]+')$""")


def script_head() -> str | None:
    """The head revision read from the migration files' ``revision`` / ``down_revision`` lines
    (`head_revision` without Alembic); None when that is not plain (a merge, several heads)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            continue
        if not all(_SIMPLE.match(found.get(key, "None")) for key in ("revision", "down_revision")):
            return None
        revisions.add(found["revision"].strip("\"'"))
        if found.get("down_revision", "None") != "None":
            parents.add(found["down_revision"].strip("\"'"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; None when it has none (new, or not Alembic's)."""
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    except Exception:  # no such table yet
        return None
    return rows[0] if len(rows) == 1 else None


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


class Database:
    """Sessions on one engine: `transaction` for a unit of work, committed whole or not at all."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session
