"""A new SQLite workspace is created from the migrations' schema template, not by Alembic (issue 21).

`explain.workspace.db.SQLITE_TEMPLATE` holds what every migration gives a new SQLite database; a new
workspace runs it instead of importing Alembic, and ends at the same schema and revision.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine

from explain.workspace.db import (
    SQLITE_TEMPLATE,
    create_from_template,
    current_revision,
    head_revision,
    migrate,
    write_sqlite_template,
)

ROOT = Path(__file__).resolve().parent.parent


def _schema(engine) -> set[tuple]:
    with engine.connect() as conn:
        return set(conn.exec_driver_sql("SELECT type, name, tbl_name, sql FROM sqlite_master").all())


def test_the_template_is_what_the_migrations_give(tmp_path):
    """Fails after a new migration until the template is rewritten (its message says how)."""
    fresh = tmp_path / "template.json"
    write_sqlite_template(fresh)
    assert json.loads(fresh.read_text()) == json.loads(SQLITE_TEMPLATE.read_text()), (
        "explain/workspace/migrations/sqlite_head.json is not what the migrations give: run "
        "python -c \"from explain.workspace.db import write_sqlite_template as w; w()\"")


def test_a_new_database_from_the_template_equals_a_migrated_one(tmp_path, monkeypatch):
    import explain.workspace.db as db

    templated = create_engine(f"sqlite:///{tmp_path / 'templated.db'}")
    assert create_from_template(templated, head_revision())
    assert not create_from_template(templated, head_revision())  # not empty any more: left alone
    migrate(templated)  # at the head: nothing to do

    migrated = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    monkeypatch.setattr(db, "create_from_template", lambda engine, head: False)
    migrate(migrated)  # Alembic, every migration
    assert _schema(templated) == _schema(migrated)
    assert current_revision(templated) == current_revision(migrated) == head_revision()


def test_a_template_for_another_revision_is_not_used(tmp_path, monkeypatch):
    import explain.workspace.db as db

    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**json.loads(SQLITE_TEMPLATE.read_text()), "revision": "0003_job_operator"}))
    monkeypatch.setattr(db, "SQLITE_TEMPLATE", stale)
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    assert not create_from_template(engine, head_revision())
    migrate(engine)  # Alembic instead
    assert current_revision(engine) == head_revision()


def test_a_new_workspace_opens_without_alembic(tmp_path):
    code = ("import sys; from explain.workspace import open_workspace; ws = open_workspace(); ws.close(); "
            "print('alembic' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "GLASSBOX_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'glassbox.db'}")
    assert current_revision(engine) == head_revision()
