"""Attacks on the API's remembered lookups (`explain.service.lookups`): the token, its role and the
version ``NAME@ALIAS`` means are kept while the newest audit ids (the stamp) are unchanged. A revoked
token must be refused, and a moved alias seen, at the very next request, whoever wrote them.

Two ways the stamp stayed the same while the workspace changed:
- PostgreSQL: a revocation whose audit id was taken before 32 other writes committed, and which
  committed after them (its transaction slow between its flush and its commit: a far database, a
  preempted process), never showed among the newest 32 ids; the revoked token kept working.
- A workspace restored from a backup hands the restored ids out again: the rows written after the
  restore have the ids the lost rows had, and the stamp of ids alone was the lost state's.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from itertools import count

import pytest
from sqlalchemy import delete, text

from explain.service.lookups import Lookups
from explain.workspace import Actor, open_workspace
from explain.workspace.schema import ApiToken
from tests.workspace_db import BACKENDS, postgres_server

OP = Actor("cli:tester", operator=True)
_names = count()


@pytest.fixture(scope="module", params=BACKENDS)
def ws(request, tmp_path_factory):
    """One workspace per backend for the module (models of a few bytes: nothing here loads one)."""
    home = tmp_path_factory.mktemp(f"attack-cache-{request.param}")
    server = postgres_server() if request.param == "postgresql" else None
    url = server.create_database() if server else f"sqlite:///{home / 'glassbox.db'}"
    workspace = open_workspace(url, home=home / "home")
    yield workspace
    workspace.close()
    if server:
        server.drop_database(url)


def _model(ws) -> str:
    """A model with versions 1 and 2 and ``prod`` on v1; its name."""
    name = f"m{next(_names)}"
    for data in (b"one", b"two"):
        ws.registry.register(OP, name, data + name.encode(), "model.pt")
    ws.registry.set_alias(OP, name, "prod", 1)
    return name


def _token(ws, role: str = "viewer") -> tuple[str, str]:
    name = f"t{next(_names)}"
    return name, ws.users.add_token(OP, name, role)


def test_a_revocation_committed_after_32_newer_writes_is_seen_at_the_next_request(ws):
    if ws.core.db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: its ids are committed in their order")
    lookups = Lookups(ws)
    model = _model(ws)
    name, token = _token(ws)
    actor = Actor(name, token=True)
    assert lookups.identity(token).name == name
    assert lookups.version(actor, f"{model}@prod").version == 1

    # another process revokes the token and moves the alias in one transaction, slow between its flush
    # (its audit ids taken) and its commit: meanwhile 32 other writes commit and requests come in
    other = open_workspace(ws.core.db.engine.url.render_as_string(hide_password=False), home=ws.home)
    try:
        with other.core.db.transaction() as s:
            other.core.audit(s, OP, "token.remove", "token", name)
            s.execute(delete(ApiToken).where(ApiToken.name == name))
            other.registry.move_alias_in(s, OP, model, "prod", 2)
            s.flush()
            for _ in range(32):
                _token(ws)
            assert lookups.stamp() == ()  # an audit row uncommitted: no stamp to remember anything under
            assert lookups.identity(token).name == name  # not revoked yet: still valid
            assert lookups.version(actor, f"{model}@prod").version == 1
    finally:
        other.close()
    assert lookups.identity(token) is None  # the next request: the token is gone
    _, viewer = _token(ws)
    who = lookups.identity(viewer)
    assert lookups.version(Actor(who.name, token=True), f"{model}@prod", who.stamp).version == 2


def _backup(ws):
    """A copy of the workspace's database now; restore(copy) puts it back, as an operator would."""
    engine = ws.core.db.engine
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        copy = sqlite3.connect(":memory:")
        with sqlite3.connect(path) as live:
            live.backup(copy)

        def restore():
            with sqlite3.connect(path) as live:
                copy.backup(live)
        return restore
    with engine.connect() as conn:  # PostgreSQL: what pg_restore leaves: the later rows gone, the sequence back
        newest = conn.scalar(text("SELECT max(id) FROM audit_log"))
        tokens = conn.scalar(text("SELECT max(id) FROM api_tokens"))
        aliases = [tuple(r) for r in conn.execute(text("SELECT id, version_id FROM aliases"))]

    def restore():
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id > :n"), {"n": newest})
            conn.execute(text("DELETE FROM api_tokens WHERE id > :n"), {"n": tokens})
            for alias_id, version_id in aliases:
                conn.execute(text("UPDATE aliases SET version_id = :v WHERE id = :i"), {"v": version_id, "i": alias_id})
            conn.execute(text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), :n)"), {"n": newest})
    return restore


def test_a_workspace_restored_from_a_backup_is_seen_though_its_ids_come_again(ws):
    lookups = Lookups(ws)
    model = _model(ws)
    viewer_name, viewer = _token(ws)
    actor = Actor(viewer_name, token=True)
    restore = _backup(ws)
    name, token = _token(ws)  # after the backup: lost by the restore
    ws.registry.set_alias(OP, model, "prod", 2)
    assert lookups.identity(token).name == name
    assert lookups.version(actor, f"{model}@prod").version == 2

    restore()
    ws.registry.add_tag(OP, model, 1, "after-restore")  # two writes: the ids of the two lost ones
    _token(ws)
    assert lookups.identity(token) is None
    assert lookups.version(actor, f"{model}@prod").version == 1
    assert lookups.identity(viewer).name == viewer_name


def _slow_body_request(app, path: str, token: str, meanwhile, wait_s: float) -> tuple[int, dict]:
    """A request through the ASGI interface whose headers come at once and whose body comes ``wait_s``
    later, ``meanwhile()`` done in between (a slow client; one trickling its body on purpose)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-length", b"2")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    out, asked = {"status": None, "body": b""}, [0]

    async def receive():
        asked[0] += 1
        if asked[0] > 1:
            return {"type": "http.disconnect"}
        meanwhile()
        await asyncio.sleep(wait_s)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    # its own thread: a browser test module earlier in the run (Playwright's sync API) can leave an event
    # loop running in the main thread, where asyncio.run refuses to start
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    return out["status"], json.loads(out["body"])


def test_a_token_revoked_while_its_request_body_arrives_is_refused(ws, monkeypatch):
    """The gate checks the token from the headers; the version was then looked up under the stamp of
    that moment, from what the lookups remembered: a body sent after the token was revoked (or the
    alias moved) was answered as before it. (So was a request that waited for a thread.) A version
    looked up later than `lookups.STAMP_STANDS_S` after the token check is looked up under a stamp
    read then, and the registry's role check refuses the revoked token."""
    from fastapi.testclient import TestClient

    from explain.service import lookups
    from explain.service.api import create_app

    monkeypatch.setattr(lookups, "STAMP_STANDS_S", 0.05)
    model = _model(ws)
    name, token = _token(ws)
    _, other = _token(ws)
    app = create_app(ws, worker=False)
    with TestClient(app) as client:
        for auth in (token, other):  # remembered, with the alias at v1
            r = client.get(f"/v1/models/{model}@prod", headers={"Authorization": f"Bearer {auth}"})
            assert (r.status_code, r.json()["version"]) == (200, 1)
    status, body = _slow_body_request(app, f"/v1/models/{model}@prod", token,
                                      lambda: ws.users.remove_token(OP, name), wait_s=0.1)
    assert (status, body) == (403, {"error": f"{name} (not a member of this workspace) may not read. "
                                             "That needs the viewer role; ask a workspace admin."})
    status, body = _slow_body_request(app, f"/v1/models/{model}@prod", other,
                                      lambda: ws.registry.set_alias(OP, model, "prod", 2), wait_s=0.1)
    assert (status, body["version"]) == (200, 2)
    misses = app.state.lookups.misses
    status, body = _slow_body_request(app, f"/v1/models/{model}@prod", other, lambda: None, wait_s=0)
    # a body at once: the version under the headers' stamp, remembered from the request before (the token
    # read again: the stamp that request read after the alias moved forgot every answer)
    assert (status, body["version"], app.state.lookups.misses) == (200, 2, misses + 1)


def test_a_database_role_that_may_not_lock_the_audit_log_is_served_unremembered(ws):
    """PostgreSQL: a role with SELECT and INSERT on the audit log (append-only hardening) may not take the
    stamp's SHARE lock: its stamps are empty, every lookup is read, none is refused or an error."""
    if ws.core.db.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's table locks")
    model = _model(ws)
    name, token = _token(ws)
    role = f"gbx_append_{next(_names)}"
    with ws.core.db.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT INSERT ON audit_log TO {role}"))
    url = ws.core.db.engine.url.set(username=role).render_as_string(hide_password=False)
    restricted = open_workspace(url, home=ws.home)
    try:
        lookups = Lookups(restricted)
        assert lookups.stamp() == ()
        for _ in range(2):
            who = lookups.identity(token)
            assert (who.name, who.stamp) == (name, ())
            assert lookups.version(Actor(name, token=True), f"{model}@prod", who.stamp).version == 1
        assert lookups.misses == 4
    finally:
        restricted.close()
