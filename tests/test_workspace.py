"""The team workspace library (`explain.workspace`) on SQLite and on a real PostgreSQL server.

Permissions (every actor kind x every action through the real calls), migrations, the
content-addressed blob store, saved runs, the registry, review, audit and accounts.
The fixtures (`db_url`, `workspace`) live in ``tests/workspace_db.py``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, event, select, text

from explain.errors import CorruptFile, NotFound, PermissionDenied, UsageError
from explain.workspace import Action, Actor, RunRecord, open_workspace
from explain.workspace.audit import COLUMNS
from explain.workspace.db import head_revision, migrate
from explain.workspace.roles import LOCAL_USER, ROLES, allows
from explain.workspace.schema import ApiToken, AuditEntry, Base, Run, User

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:tester", operator=True)


# -- helpers -----------------------------------------------------------------------------------
def snapshot(ws) -> dict[str, list[str]]:
    """Every row of every workspace table (sorted reprs): equal snapshots, nothing written."""
    out = {}
    with ws.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            out[table.name] = sorted(repr(tuple(row)) for row in conn.execute(select(table)))
    return out


def blob_files(ws) -> set[str]:
    return {str(p.relative_to(ws.core.blobs.root)) for p in ws.core.blobs.root.rglob("*") if p.is_file()}


def audit_entries(ws) -> list[AuditEntry]:
    with ws.core.db.transaction() as s:
        return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def assert_no_row_names_a_missing_blob(ws) -> None:
    """Every sha256 a row names is a whole blob under its real name."""
    with ws.engine.connect() as conn:
        shas = [r[0] for r in conn.execute(text("SELECT sha256 FROM model_versions UNION ALL "
                                                "SELECT sha256 FROM attachments UNION ALL "
                                                "SELECT inputs_sha256 FROM runs UNION ALL "
                                                "SELECT results_sha256 FROM runs"))]
    for sha in shas:
        path = ws.core.blobs.path(sha)
        assert path.is_file(), f"a row names the missing blob {sha}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def arrays_equal_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype, key
        assert x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), key


def record(title: str = "a run", version: int = 1, model: str = "m", **kw) -> RunRecord:
    rng = np.random.default_rng(0)
    defaults = dict(page="output", model=model, version=version, title=title, method="integrated_gradients",
                    params={"steps": 32}, target=2,
                    inputs={"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)},
                    results={"attr": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)},
                    summary={"quality": {"faithfulness": 0.5}}, environment={"device": "cpu", "precision": "fp32"})
    defaults.update(kw)
    return RunRecord(**defaults)


# -- permissions ---------------------------------------------------------------------------------
#: What each role may do, written out (not read from roles.py): the known answer.
MAY = {
    "viewer": {Action.READ},
    "reviewer": {Action.READ, Action.COMMENT, Action.DECIDE},
    "editor": {Action.READ, Action.COMMENT, Action.DECIDE, Action.UPLOAD, Action.SAVE_RUN, Action.EDIT_REGISTRY,
               Action.LOAD_MODEL},
    "admin": set(Action),
    None: set(),
}


def test_permission_table_is_the_documented_one():
    assert ROLES == ("viewer", "reviewer", "editor", "admin")
    for role, allowed in MAY.items():
        for action in Action:
            assert allows(role, action) == (action in allowed), (role, action)
    with pytest.raises(UsageError):
        allows("superuser", Action.READ)


@dataclass
class Ctx:
    run_id: str
    comment_id: int
    n: int = 0

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


@dataclass(frozen=True)
class Call:
    label: str
    action: Action
    do: Callable  # (ws, actor, ctx, prepared) -> None; asserts what an allowed call returns
    prep: Callable | None = None  # (ws, ctx) -> prepared, done by the operator before the snapshot


def _read_calls() -> list[Call]:
    def runs_list(ws, a, c, _):
        assert c.run_id in [r.id for r in ws.runs.list(a)]

    def runs_open(ws, a, c, _):
        assert ws.runs.open(a, c.run_id).inputs["x"].shape == (2, 3, 4, 4)

    def registry_file(ws, a, c, _):
        assert ws.registry.file(a, "m", 1)[0] == b"model-one"

    def comments(ws, a, c, _):
        assert c.comment_id in [x.id for x in ws.review.comments(a, c.run_id)]

    return [
        Call("runs.list", Action.READ, runs_list),
        Call("runs.open", Action.READ, runs_open),
        Call("runs.info", Action.READ, lambda ws, a, c, _: ws.runs.info(a, c.run_id)),
        Call("runs.blob_names", Action.READ, lambda ws, a, c, _: ws.runs.blob_names(a, c.run_id)),
        Call("registry.list", Action.READ, lambda ws, a, c, _: ws.registry.list(a)),
        Call("registry.resolve", Action.READ, lambda ws, a, c, _: ws.registry.resolve(a, "m@v1")),
        Call("registry.find_by_sha", Action.READ,
             lambda ws, a, c, _: ws.registry.find_by_sha(a, hashlib.sha256(b"model-one").hexdigest())),
        Call("registry.file", Action.READ, registry_file),
        Call("registry.attachments", Action.READ, lambda ws, a, c, _: ws.registry.attachments(a, "m", 1)),
        Call("review.comments", Action.READ, comments),
        Call("review.threads", Action.READ, lambda ws, a, c, _: ws.review.threads(a, include_resolved=True)),
        Call("review.decisions", Action.READ, lambda ws, a, c, _: ws.review.decisions(a, "m")),
    ]


def _write_calls() -> list[Call]:
    def post(ws, a, c, _):
        assert ws.review.post(a, c.run_id, "looks fine", anchor_kind="input", anchor="1").author == a.name

    def save(ws, a, c, _):
        assert ws.runs.save(a, record(c.fresh("run-"))).author == a.name

    def target_user(ws, c):
        return ws.users.add(OP, c.fresh("target-"), "viewer").name

    return [
        Call("review.post", Action.COMMENT, post),
        Call("review.reply", Action.COMMENT, lambda ws, a, c, _: ws.review.post(a, c.run_id, "re", parent_id=c.comment_id)),
        Call("review.resolve", Action.COMMENT, lambda ws, a, c, _: ws.review.set_resolved(a, c.comment_id, True)),
        Call("review.reopen", Action.COMMENT, lambda ws, a, c, _: ws.review.set_resolved(a, c.comment_id, False),
             prep=lambda ws, c: ws.review.set_resolved(OP, c.comment_id, True)),
        Call("review.decide", Action.DECIDE, lambda ws, a, c, _: ws.review.decide(a, "m", 1, "request_changes", "why")),
        Call("review.decide+alias", Action.DECIDE,
             lambda ws, a, c, _: ws.review.decide(a, "m", 1, "approve", "ok", move_alias="production")),
        Call("registry.register", Action.UPLOAD,
             lambda ws, a, c, _: ws.registry.register(a, "m", c.fresh("bytes-").encode(), "m.safetensors")),
        Call("registry.register new model", Action.UPLOAD,
             lambda ws, a, c, _: ws.registry.register(a, c.fresh("model-"), b"model-one", "x.safetensors")),
        Call("runs.save", Action.SAVE_RUN, save),
        Call("registry.set_alias", Action.EDIT_REGISTRY, lambda ws, a, c, _: ws.registry.set_alias(a, "m", "candidate", 1)),
        Call("registry.add_tag", Action.EDIT_REGISTRY, lambda ws, a, c, _: ws.registry.add_tag(a, "m", 1, c.fresh("tag-"))),
        Call("registry.attach", Action.EDIT_REGISTRY,
             lambda ws, a, c, _: ws.registry.attach(a, "m", 1, "training_log", c.fresh("log ").encode(), "log.txt")),
        Call("users.add", Action.MANAGE_USERS, lambda ws, a, c, _: ws.users.add(a, c.fresh("new-"), "viewer")),
        Call("users.list", Action.MANAGE_USERS, lambda ws, a, c, _: ws.users.list(a)),
        Call("users.set_role", Action.MANAGE_USERS, lambda ws, a, c, name: ws.users.set_role(a, name, "editor"),
             prep=target_user),
        Call("users.remove", Action.MANAGE_USERS, lambda ws, a, c, name: ws.users.remove(a, name), prep=target_user),
        Call("users.add_token", Action.MANAGE_TOKENS, lambda ws, a, c, _: ws.users.add_token(a, c.fresh("tok-"), "viewer")),
        Call("workspace.load_model", Action.LOAD_MODEL,  # the loader stands in: only the check is the library's
             lambda ws, a, c, _: ws.load_model(a, b"model bytes", loader=lambda data: data)),
        Call("registry.protect", Action.PROTECT_ALIAS, lambda ws, a, c, _: ws.registry.protect(a, "m", c.fresh("kept-"))),
        Call("registry.unprotect", Action.PROTECT_ALIAS, lambda ws, a, c, alias: ws.registry.unprotect(a, "m", alias),
             prep=lambda ws, c: ws.registry.protect(OP, "m", c.fresh("kept-")).alias),
        Call("audit.rows", Action.READ_AUDIT, lambda ws, a, c, _: ws.audit.rows(a)),
        Call("audit.csv", Action.READ_AUDIT, lambda ws, a, c, _: ws.audit.csv(a)),
    ]


CALLS = _read_calls() + _write_calls()
WRITES = {Action.COMMENT, Action.DECIDE, Action.UPLOAD, Action.SAVE_RUN, Action.EDIT_REGISTRY,
          Action.MANAGE_TOKENS, Action.PROTECT_ALIAS}
WRITE_LABELS = {"users.add", "users.set_role", "users.remove"}


def test_every_action_has_a_real_call():
    assert {c.action for c in CALLS} == set(Action)


def populate(ws, accounts: bool = True) -> Ctx:
    """Model m@v1, one saved run with one comment, API tokens of every role; with ``accounts``
    the users alice (admin), vera (viewer), rita (reviewer), eddie (editor). No passwords (no bcrypt)."""
    if accounts:
        ws.users.add(OP, "alice", "admin")
        for name, role in (("vera", "viewer"), ("rita", "reviewer"), ("eddie", "editor")):
            ws.users.add(OP, name, role)
    for role in ROLES:
        ws.users.add_token(OP, f"token-{role}", role)
    ws.registry.register(OP, "m", b"model-one", "m.safetensors")
    run = ws.runs.save(OP, record())
    comment = ws.review.post(OP, run.id, "first")
    return Ctx(run.id, comment.id)


def check_calls(ws, ctx: Ctx, actor: Actor, role: str | None, calls: list[Call]) -> None:
    """Run every call as ``actor``; allowed ones succeed (writes audited as the actor), refused ones
    raise PermissionDenied and change no row and no blob."""
    problems = []
    for call in calls:
        prepared = call.prep(ws, ctx) if call.prep else None
        before, blobs, audit_before = snapshot(ws), blob_files(ws), len(audit_entries(ws))
        allowed = call.action in MAY[role]
        try:
            call.do(ws, actor, ctx, prepared)
        except PermissionDenied as exc:
            if allowed:
                problems.append(f"{call.label}: refused but {role} may {call.action}: {exc}")
            if snapshot(ws) != before or blob_files(ws) != blobs:
                problems.append(f"{call.label}: refused, yet it wrote something")
            continue
        if not allowed:
            problems.append(f"{call.label}: {actor} ({role}) was allowed {call.action}")
            continue
        entries = audit_entries(ws)
        if call.action in WRITES or call.label in WRITE_LABELS:
            if len(entries) <= audit_before or entries[-1].actor != actor.name:
                problems.append(f"{call.label}: a write without its audit row by {actor.name}")
        elif len(entries) != audit_before or snapshot(ws) != before:
            problems.append(f"{call.label}: a read wrote rows")
    assert not problems, "\n".join(problems)


ACTORS = {
    # label: (actor, the role the workspace must give it)
    "viewer": (Actor("vera"), "viewer"),
    "reviewer": (Actor("rita"), "reviewer"),
    "editor": (Actor("eddie"), "editor"),
    "admin": (Actor("alice"), "admin"),
    "not-a-member": (Actor("mallory"), None),
    "local-with-accounts": (Actor.local(), None),
    "token-viewer": (Actor("token-viewer", token=True), "viewer"),
    "token-reviewer": (Actor("token-reviewer", token=True), "reviewer"),
    "token-editor": (Actor("token-editor", token=True), "editor"),
    "token-admin": (Actor("token-admin", token=True), "admin"),
    "token-named-like-an-admin": (Actor("alice", token=True), None),  # a token never borrows a user's role
    "operator": (OP, "admin"),
}


@pytest.mark.parametrize("who", list(ACTORS))
def test_every_actor_times_every_action(workspace, who):
    ctx = populate(workspace)
    actor, role = ACTORS[who]
    assert workspace.users.role_of(actor) == role
    check_calls(workspace, ctx, actor, role, CALLS)


def test_local_user_without_accounts_is_admin_until_the_first_account(workspace):
    ctx = populate(workspace, accounts=False)
    local = Actor.local()
    assert not workspace.users.any_accounts()
    assert workspace.users.role_of(local) == "admin"
    needs_users = {"users.add", "users.set_role", "users.remove"}  # those end single-user mode
    check_calls(workspace, ctx, local, "admin", [c for c in CALLS if c.label not in needs_users])
    assert workspace.users.list(local) == []
    workspace.users.add(local, "boss", "admin")
    assert workspace.users.any_accounts()
    assert workspace.users.role_of(local) is None
    check_calls(workspace, ctx, local, None, CALLS)


@pytest.mark.parametrize("who", ["not-a-member", "token-viewer", "token-editor"])
def test_only_an_admin_creates_the_first_account(workspace, who):
    """Without accounts the local user (and the operator) is admin; nobody else may make themselves one."""
    for role in ROLES:
        workspace.users.add_token(OP, f"token-{role}", role)
    before = snapshot(workspace)
    with pytest.raises(PermissionDenied):
        workspace.users.add(ACTORS[who][0], "eve", "admin")
    assert snapshot(workspace) == before
    assert not workspace.users.any_accounts()


def test_a_role_change_applies_at_once(workspace):
    ctx = populate(workspace)
    eddie = Actor("eddie")
    workspace.runs.save(eddie, record("before"))
    workspace.users.set_role(OP, "eddie", "viewer")
    with pytest.raises(PermissionDenied):
        workspace.runs.save(eddie, record("after"))
    workspace.users.remove(OP, "eddie")
    with pytest.raises(PermissionDenied):
        workspace.runs.list(eddie)
    assert workspace.runs.info(OP, ctx.run_id).title == "a run"


# -- migrations ----------------------------------------------------------------------------------
def test_migrations_from_an_empty_database_reach_head_and_match_the_models(db_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    ws = open_workspace(db_url, home=tmp_path)
    try:
        with ws.engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
            tables = set(ws.engine.dialect.get_table_names(conn))
        assert tables == {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"}
    finally:
        ws.close()


def test_opening_a_migrated_database_again_changes_nothing(db_url, tmp_path):
    ws = open_workspace(db_url, home=tmp_path)
    populate(ws)
    before = snapshot(ws)
    ws.close()

    engine = create_engine(db_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: statements.append(statement.strip().split()[0].upper()))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    assert not {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"} & set(statements), statements

    again = open_workspace(db_url, home=tmp_path)
    try:
        assert snapshot(again) == before
        with again.engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()
    finally:
        again.close()


def test_a_bad_database_url_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a database URL"):
        open_workspace("no such url", home=tmp_path)


# -- content-addressed storage ---------------------------------------------------------------------
def test_same_bytes_are_stored_once_under_their_sha256(workspace):
    data = os.urandom(4096)
    sha = hashlib.sha256(data).hexdigest()
    a = workspace.registry.register(OP, "a", data, "a.safetensors")
    b = workspace.registry.register(OP, "b", data, "b.safetensors")
    assert a.sha256 == b.sha256 == sha == workspace.core.blobs.put(data)
    assert blob_files(workspace) == {f"{sha[:2]}/{sha}"}
    assert workspace.core.blobs.get(sha) == data
    assert workspace.registry.find_by_sha(OP, sha).name == "a"  # the oldest version with that file


def test_a_damaged_or_missing_blob_is_reported_not_returned(workspace):
    sha = workspace.core.blobs.put(b"precious")
    workspace.core.blobs.path(sha).write_bytes(b"precioux")
    with pytest.raises(CorruptFile):
        workspace.core.blobs.get(sha)
    workspace.core.blobs.path(sha).unlink()
    with pytest.raises(NotFound):
        workspace.core.blobs.get(sha)
    with pytest.raises(NotFound):
        workspace.core.blobs.path("../../etc/passwd")


def _crash_on_rename(monkeypatch, after: int = 0):
    """os.replace raises (a crash between write and rename) from its ``after``-th call on."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > after:
            raise OSError("simulated crash between write and rename")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_crash_before_the_rename_leaves_no_blob_and_no_row(workspace, monkeypatch):
    data = os.urandom(2048)
    sha = hashlib.sha256(data).hexdigest()
    before = snapshot(workspace)
    _crash_on_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        workspace.registry.register(OP, "m", data, "m.safetensors")
    assert not workspace.core.blobs.path(sha).exists()
    assert blob_files(workspace) == set()  # no temporary file left either
    assert snapshot(workspace) == before  # registering failed whole: no model, version or audit row
    monkeypatch.undo()

    info = workspace.registry.register(OP, "m", data, "m.safetensors")
    assert (info.version, info.sha256) == (1, sha)
    assert_no_row_names_a_missing_blob(workspace)


def test_a_crash_storing_a_runs_results_leaves_no_run(workspace, monkeypatch):
    workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    before = snapshot(workspace)
    _crash_on_rename(monkeypatch, after=1)  # the inputs blob lands, the results blob does not
    with pytest.raises(OSError, match="simulated crash"):
        workspace.runs.save(OP, record())
    monkeypatch.undo()
    assert snapshot(workspace) == before
    assert workspace.runs.list(OP) == []
    assert not [f for f in blob_files(workspace) if f.endswith(".tmp")]
    assert_no_row_names_a_missing_blob(workspace)


# -- saved runs --------------------------------------------------------------------------------
def test_a_reopened_run_is_exactly_what_was_saved(workspace):
    workspace.users.add(OP, "alice", "admin")
    workspace.users.add(OP, "eddie", "editor")
    v = workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    inputs = {"x": x, "tokens": np.array([[101, 2023, 102]], dtype=np.int64), "labels": np.array(["cat", "dög"])}
    results = {"attr": rng.standard_normal((3, 1, 8, 8)), "mask": rng.random((3, 8)) > 0.5,
               "half": rng.standard_normal(5).astype(np.float16), "img": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8),
               "skipped": None}
    params = {"steps": 50, "baseline": "zeros", "alpha": np.float32(0.25), "window": (2, 2), "nested": {"a": [1, 2.5]},
              "n": np.int64(3)}
    summary = {"quality": {"deletion_auc": 0.125, "nan": float("nan")}, "findings": [{"kind": "dead", "layer": "fc1"}]}
    env = {"packages": {"torch": "2.13.0"}, "device": "cpu", "precision": "fp32"}
    t0 = datetime.now(UTC)
    info = workspace.runs.save(Actor("eddie"), RunRecord(
        page="output", model="m", version=v.version, title="IG on three shapes", method="integrated_gradients",
        params=params, target=[1, 0, 2], inputs=inputs, results=results, summary=summary, environment=env))

    saved = workspace.runs.open(Actor("alice"), info.id)
    arrays_equal_bitwise(saved.inputs, inputs)
    arrays_equal_bitwise(saved.results, {k: v for k, v in results.items() if v is not None})
    assert saved.info == info == workspace.runs.info(OP, info.id)
    assert saved.info.params == {"steps": 50, "baseline": "zeros", "alpha": 0.25, "window": [2, 2],
                                 "nested": {"a": [1, 2.5]}, "n": 3}
    assert json.loads(json.dumps(saved.info.params)) == saved.info.params
    assert saved.info.target == [1, 0, 2]
    assert saved.info.summary == {"quality": {"deletion_auc": 0.125, "nan": None},
                                  "findings": [{"kind": "dead", "layer": "fc1"}]}
    assert saved.info.environment == env
    assert (saved.info.model, saved.info.version, saved.info.sha256) == ("m", 1, hashlib.sha256(b"model-one").hexdigest())
    assert (saved.info.page, saved.info.method, saved.info.author) == ("output", "integrated_gradients", "eddie")
    created = datetime.fromisoformat(saved.info.created)
    assert created.tzinfo is not None and abs(created - t0) < timedelta(minutes=2)
    assert workspace.runs.blob_names(OP, info.id) == (saved_sha(inputs), saved_sha(results))


def saved_sha(arrays) -> str:
    """The blob name `put_arrays` gives these arrays (np.savez_compressed is deterministic)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items() if v is not None})
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.mark.parametrize("target", [None, 3, [0, 1]])
def test_the_target_round_trips(workspace, target):
    workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    info = workspace.runs.save(OP, record(target=target))
    assert workspace.runs.open(OP, info.id).info.target == target


def test_a_run_that_cannot_be_saved_writes_nothing(workspace):
    workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    before, blobs = snapshot(workspace), blob_files(workspace)
    with pytest.raises(UsageError, match="Unknown page"):
        workspace.runs.save(OP, record(page="dashboard"))
    with pytest.raises(NotFound):
        workspace.runs.save(OP, record(version=9))
    assert blob_files(workspace) == blobs  # refused before any blob was written
    with pytest.raises(TypeError, match="dtype object"):  # never pickled: refused (its inputs blob may stay)
        workspace.runs.save(OP, record(results={"bad": np.array([{"a": 1}], dtype=object)}))
    assert snapshot(workspace) == before
    with pytest.raises(NotFound):
        workspace.runs.open(OP, "nope")


def test_runs_list_newest_first_and_by_model(workspace):
    workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    workspace.registry.register(OP, "m", b"model-two", "m.safetensors")
    workspace.registry.register(OP, "n", b"other", "n.safetensors")
    a = workspace.runs.save(OP, record("first"))
    b = workspace.runs.save(OP, record("second", version=2))
    c = workspace.runs.save(OP, record("third", model="n"))
    assert {r.id for r in workspace.runs.list(OP)} == {a.id, b.id, c.id}
    assert {r.id for r in workspace.runs.list(OP, model="m")} == {a.id, b.id}
    assert [r.id for r in workspace.runs.list(OP, model="m", version=2)] == [b.id]
    assert [r.id for r in workspace.runs.list(OP, model="n")] == [c.id]
    created = [r.created for r in workspace.runs.list(OP)]
    assert created == sorted(created, reverse=True)


# -- registry -------------------------------------------------------------------------------------
def test_version_numbers_aliases_and_references(workspace):
    reg = workspace.registry
    v1 = reg.register(OP, "m", b"file-one", "m.safetensors", alias="candidate")
    assert (v1.version, v1.aliases, v1.ref) == (1, ["candidate"], "m@v1")
    audit_count = len(audit_entries(workspace))
    assert reg.register(OP, "m", b"file-one", "renamed.safetensors").version == 1  # the same file: found
    assert len(audit_entries(workspace)) == audit_count  # and nothing written
    v2 = reg.register(OP, "m", b"file-two", "m.safetensors")
    assert v2.version == 2
    assert reg.register(OP, "m", b"file-one", "m.safetensors").version == 1
    assert reg.register(OP, "m", b"file-three", "m.safetensors").version == 3
    assert reg.register(OP, "other", b"file-two", "o.safetensors").version == 1  # numbering is per model

    assert reg.resolve(OP, "m").version == 3  # the newest
    assert reg.resolve(OP, "m@v2").sha256 == hashlib.sha256(b"file-two").hexdigest()
    assert reg.resolve(OP, "m@candidate").version == 1
    moved = reg.set_alias(OP, "m", "candidate", 2)
    assert moved.aliases == ["candidate"]
    assert reg.resolve(OP, "m@candidate").version == 2
    assert reg.version(OP, "m", 1).aliases == []
    reg.set_alias(OP, "m", "production", 2)
    assert reg.version(OP, "m", 2).aliases == ["candidate", "production"]

    for ref in ("m@v9", "m@nope", "ghost"):
        with pytest.raises(NotFound):
            reg.resolve(OP, ref)
    with pytest.raises(UsageError, match="version number"):
        reg.set_alias(OP, "m", "v3", 1)
    for bad in ("", "has space", "-dash", "a/b", "x" * 201):
        with pytest.raises(UsageError):
            reg.register(OP, bad, b"file-four", "f")
    assert [(v.name, v.version) for v in reg.list(OP)] == [("m", 1), ("m", 2), ("m", 3), ("other", 1)]
    assert [v.version for v in reg.list(OP, "m")] == [1, 2, 3]
    data, filename, spec = reg.file(OP, "m", "candidate")
    assert (data, filename, spec) == (b"file-two", "m.safetensors", None)


def test_tags_attachments_and_specs(workspace):
    reg = workspace.registry
    reg.register(OP, "m", b"file-one", "m.safetensors", spec_json=b'{"input": [1, 28, 28]}')
    assert reg.file(OP, "m", 1)[2] == b'{"input": [1, 28, 28]}'
    reg.add_tag(OP, "m", 1, "mnist")
    n = len(audit_entries(workspace))
    assert reg.add_tag(OP, "m", 1, "mnist").tags == ["mnist"]  # once
    assert len(audit_entries(workspace)) == n
    reg.add_tag(OP, "m", 1, "baseline")
    assert reg.version(OP, "m", 1).tags == ["baseline", "mnist"]

    log = reg.attach(OP, "m", 1, "training_log", b"epoch,loss\n1,0.5\n", "train.csv")
    ckpt = reg.attach(OP, "m", 1, "checkpoint", b"weights", "epoch1.safetensors")
    assert [(a.kind, a.filename, a.sha256) for a in reg.attachments(OP, "m", 1)] == [
        ("training_log", "train.csv", hashlib.sha256(b"epoch,loss\n1,0.5\n").hexdigest()),
        ("checkpoint", "epoch1.safetensors", hashlib.sha256(b"weights").hexdigest())]
    assert workspace.core.blobs.get(log.sha256) == b"epoch,loss\n1,0.5\n"
    assert workspace.core.blobs.get(ckpt.sha256) == b"weights"
    with pytest.raises(UsageError, match="attachment kind"):
        reg.attach(OP, "m", 1, "notes", b"x", "x.txt")
    assert_no_row_names_a_missing_blob(workspace)


# -- review -----------------------------------------------------------------------------------------
def test_decisions_history_and_alias_move(workspace):
    ctx = populate(workspace)
    workspace.registry.register(OP, "m", b"model-two", "m.safetensors", alias="production")
    rita = Actor("rita")
    first = workspace.review.decide(rita, "m", 1, "request_changes", "  background dominates  ")
    assert (first.verdict, first.note, first.alias, first.author) == ("request_changes", "background dominates", None, "rita")
    assert workspace.registry.version(OP, "m", 1).decision == "request_changes"
    assert workspace.registry.resolve(OP, "m@production").version == 2

    second = workspace.review.decide(rita, "m", 1, "approve", "fixed", move_alias="production")
    assert second.alias == "production"
    assert workspace.registry.resolve(OP, "m@production").version == 1  # the reviewer's approval moved it
    assert workspace.registry.version(OP, "m", 1).decision == "approve"
    assert workspace.registry.version(OP, "m", 2).decision is None
    assert [(d.verdict, d.version) for d in workspace.review.decisions(OP, "m")] == [
        ("request_changes", 1), ("approve", 1)]
    assert workspace.review.decisions(OP, "m", 2) == []
    moved = [e for e in audit_entries(workspace) if e.action == "alias.set"][-1]
    assert (moved.actor, moved.before, moved.after) == ("rita", {"version": 2}, {"version": 1})

    before = snapshot(workspace)
    with pytest.raises(UsageError, match="Only an approval"):
        workspace.review.decide(rita, "m", 2, "request_changes", move_alias="production")
    with pytest.raises(UsageError, match="verdict"):
        workspace.review.decide(rita, "m", 2, "lgtm")
    with pytest.raises(NotFound):
        workspace.review.decide(rita, "m", 7, "approve")
    with pytest.raises(UsageError):  # both or neither: an alias that cannot be set leaves no decision
        workspace.review.decide(rita, "m", 2, "approve", move_alias="not an alias")
    assert snapshot(workspace) == before
    assert ctx.run_id


def test_threads_replies_resolve_reopen_and_anchors(workspace):
    ctx = populate(workspace)
    rita, eddie = Actor("rita"), Actor("eddie")
    other_run = workspace.runs.save(OP, record("other run"))
    root = workspace.review.post(rita, ctx.run_id, "The <b>background</b> lights up", anchor_kind="input", anchor=3)
    assert (root.anchor_kind, root.anchor, root.anchor_label) == ("input", "3", "input 3")
    assert root.body == "The <b>background</b> lights up"  # stored as typed; pages render it safely
    reply = workspace.review.post(eddie, ctx.run_id, "Retrained with crops", anchor_kind="layer", anchor="fc1",
                                  parent_id=root.id)
    assert (reply.parent_id, reply.anchor_kind, reply.anchor) == (root.id, "input", "3")  # stays on its thread
    layer = workspace.review.post(rita, other_run.id, "dead units", anchor_kind="layer", anchor="features.3")
    finding = workspace.review.post(rita, other_run.id, "real", anchor_kind="finding", anchor="dead_units")
    run_level = workspace.review.post(rita, other_run.id, "overall ok", anchor_kind="run", anchor="ignored")
    assert (run_level.anchor, run_level.anchor_label) == ("", "the run")

    threads = workspace.review.threads(OP)
    by_root = {t.root.id: t for t in threads}
    assert set(by_root) == {ctx.comment_id, root.id, layer.id, finding.id, run_level.id}
    assert [r.id for r in by_root[root.id].replies] == [reply.id]
    assert (by_root[root.id].model, by_root[root.id].version, by_root[root.id].run_title) == ("m", 1, "a run")
    assert by_root[layer.id].run_title == "other run"

    resolved = workspace.review.set_resolved(eddie, root.id, True)
    assert (resolved.resolved, resolved.resolved_by) == (True, "eddie")
    assert root.id not in {t.root.id for t in workspace.review.threads(OP)}
    assert root.id in {t.root.id for t in workspace.review.threads(OP, include_resolved=True)}
    reopened = workspace.review.set_resolved(rita, root.id, False)
    assert (reopened.resolved, reopened.resolved_by) == (False, None)
    assert root.id in {t.root.id for t in workspace.review.threads(OP, model="m", version=1)}
    assert workspace.review.threads(OP, model="m", version=2) == []

    assert [c.id for c in workspace.review.comments(OP, ctx.run_id)] == [ctx.comment_id, root.id, reply.id]
    before = snapshot(workspace)
    with pytest.raises(UsageError, match="first comment"):
        workspace.review.set_resolved(rita, reply.id, True)
    with pytest.raises(NotFound):  # a reply must be on its parent's run
        workspace.review.post(rita, other_run.id, "x", parent_id=root.id)
    with pytest.raises(NotFound):
        workspace.review.post(rita, "no-such-run", "x")
    with pytest.raises(UsageError, match="empty"):
        workspace.review.post(rita, ctx.run_id, "   ")
    with pytest.raises(UsageError, match="anchor"):
        workspace.review.post(rita, ctx.run_id, "x", anchor_kind="pixel")
    with pytest.raises(UsageError, match="longer"):
        workspace.review.post(rita, ctx.run_id, "x" * 20_001)
    with pytest.raises(NotFound):
        workspace.review.set_resolved(rita, 10_000, True)
    assert snapshot(workspace) == before


# -- audit ------------------------------------------------------------------------------------------
def test_every_write_leaves_its_audit_row_and_the_csv_carries_them(workspace):
    alice = Actor("alice")
    workspace.users.add(OP, "alice", "admin")
    workspace.users.add(alice, "rita", "reviewer")
    workspace.users.set_role(alice, "rita", "editor")
    workspace.users.add_token(alice, "ci", "viewer")
    workspace.registry.register(alice, "m", b"one", "m.safetensors", alias="candidate")
    workspace.registry.register(alice, "m", b"two", "m.safetensors")
    workspace.registry.set_alias(alice, "m", "candidate", 2)
    workspace.registry.add_tag(alice, "m", 2, "mnist")
    workspace.registry.attach(alice, "m", 2, "checkpoint", b"ck", "ck.safetensors")
    run = workspace.runs.save(Actor("rita"), record(version=2))
    c = workspace.review.post(Actor("rita"), run.id, "hm")
    workspace.review.set_resolved(alice, c.id, True)
    workspace.review.set_resolved(alice, c.id, False)
    workspace.review.decide(alice, "m", 2, "approve", "ok", move_alias="production")
    workspace.users.remove(alice, "rita")
    reads = [workspace.runs.list(alice), workspace.registry.list(alice), workspace.review.threads(alice)]
    assert all(reads)

    rows = workspace.audit.rows(alice)
    got = [(r.actor, r.action, r.object_type, r.object_id, r.before, r.after) for r in rows]
    assert got == [
        ("cli:tester", "user.add", "user", "alice", None, {"role": "admin"}),
        ("alice", "user.add", "user", "rita", None, {"role": "reviewer"}),
        ("alice", "user.set_role", "user", "rita", {"role": "reviewer"}, {"role": "editor"}),
        ("alice", "token.add", "token", "ci", None, {"role": "viewer"}),
        ("alice", "model.add", "model", "m", None, None),
        ("alice", "version.add", "model_version", "m@v1", None,
         {"sha256": hashlib.sha256(b"one").hexdigest(), "filename": "m.safetensors"}),
        ("alice", "alias.set", "alias", "m@candidate", None, {"version": 1}),
        ("alice", "version.add", "model_version", "m@v2", None,
         {"sha256": hashlib.sha256(b"two").hexdigest(), "filename": "m.safetensors"}),
        ("alice", "alias.set", "alias", "m@candidate", {"version": 1}, {"version": 2}),
        ("alice", "tag.add", "model_version", "m@v2", None, {"tag": "mnist"}),
        ("alice", "attachment.add", "model_version", "m@v2", None,
         {"kind": "checkpoint", "filename": "ck.safetensors", "sha256": hashlib.sha256(b"ck").hexdigest()}),
        ("rita", "run.save", "run", run.id, None, {"model": "m@v2", "page": "output", "method": "integrated_gradients"}),
        ("rita", "comment.post", "comment", str(c.id), None, {"run": run.id, "anchor": "run:", "parent": None}),
        ("alice", "comment.resolve", "comment", str(c.id), {"resolved": False}, {"resolved": True}),
        ("alice", "comment.reopen", "comment", str(c.id), {"resolved": True}, {"resolved": False}),
        ("alice", "alias.set", "alias", "m@production", None, {"version": 2}),
        ("alice", "decision.approve", "model_version", "m@v2", None, {"note": "ok", "alias": "production"}),
        ("alice", "user.remove", "user", "rita", {"role": "editor"}, None),
    ]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert all(datetime.fromisoformat(r.at).tzinfo is not None for r in rows)
    assert [r.id for r in workspace.audit.rows(alice, limit=2)] == [r.id for r in rows[-2:]]

    table = list(csv.reader(io.StringIO(workspace.audit.csv(alice))))
    assert tuple(table[0]) == COLUMNS == ("id", "at", "actor", "action", "object_type", "object_id", "before", "after")
    assert len(table) == len(rows) + 1
    for line, row in zip(table[1:], rows):
        values = dict(zip(COLUMNS, line))
        assert values["id"] == str(row.id) and values["at"] == row.at and values["action"] == row.action
        assert (json.loads(values["before"]) if values["before"] else None) == row.before
        assert (json.loads(values["after"]) if values["after"] else None) == row.after


# -- accounts -----------------------------------------------------------------------------------------
def test_first_account_admin_and_the_last_admin_stays(workspace):
    users = workspace.users
    with pytest.raises(UsageError, match="first account must be an admin"):
        users.add(OP, "vera", "viewer")
    assert not users.any_accounts()
    users.add(OP, "alice", "admin")
    users.add(OP, "vera", "viewer")
    with pytest.raises(UsageError, match="already exists"):
        users.add(OP, "vera", "editor")
    with pytest.raises(UsageError, match="Unknown role"):
        users.add(OP, "bob", "owner")
    with pytest.raises(UsageError, match="user name"):
        users.add(OP, "two words", "viewer")
    for attempt in (lambda: users.set_role(OP, "alice", "editor"), lambda: users.remove(OP, "alice")):
        before = snapshot(workspace)
        with pytest.raises(UsageError, match="last admin"):
            attempt()
        assert snapshot(workspace) == before
    users.set_role(OP, "vera", "admin")
    assert users.set_role(Actor("vera"), "alice", "editor").role == "editor"  # vera is admin now
    with pytest.raises(UsageError, match="last admin"):
        users.remove(Actor("vera"), "vera")
    assert users.remove(Actor("vera"), "alice") == {"removed": "alice"}
    assert [(u.name, u.role) for u in users.list(Actor("vera"))] == [("vera", "admin")]
    with pytest.raises(NotFound):
        users.remove(Actor("vera"), "alice")
    with pytest.raises(NotFound):
        users.set_role(Actor("vera"), "ghost", "viewer")


def test_passwords_are_bcrypt_hashed_and_verified(workspace):
    import bcrypt

    users = workspace.users
    info = users.add(OP, "alice", "admin", password="correct horse", email="a@example.org")
    assert (info.has_password, info.email) == (True, "a@example.org")
    users.add(OP, "oidc-only", "viewer")
    with pytest.raises(UsageError, match="shorter"):
        users.add(OP, "bob", "viewer", password="short")
    with workspace.core.db.transaction() as s:
        stored = s.scalar(select(User.password_hash).where(User.name == "alice"))
    assert stored.startswith("$2") and "correct horse" not in stored
    assert bcrypt.checkpw(b"correct horse", stored.encode())
    assert users.verify_password("alice", "correct horse") is True
    assert users.verify_password("alice", "correct hors") is False
    assert users.verify_password("alice", "") is False
    assert users.verify_password("nobody", "correct horse") is False
    assert users.verify_password("oidc-only", "anything") is False
    creds = users.credentials()["usernames"]
    assert set(creds) == {"alice"}
    assert creds["alice"]["password"] == stored and creds["alice"]["roles"] == ["admin"]


def test_api_tokens_are_shown_once_and_stored_as_sha256(workspace):
    token = workspace.users.add_token(OP, "ci", "editor")
    assert token.startswith("gbx_") and len(token) > 30
    with workspace.core.db.transaction() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "ci"))
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    dump = json.dumps(snapshot(workspace))
    assert token not in dump and token[4:] not in dump
    assert workspace.users.token_identity(token) == ("ci", "editor")
    assert workspace.users.token_identity(token + "x") is None
    assert workspace.users.role_of(Actor("ci", token=True)) == "editor"
    assert workspace.users.role_of(Actor("ci")) is None  # a user named ci is someone else
    with pytest.raises(UsageError, match="exists"):
        workspace.users.add_token(OP, "ci", "viewer")
    assert workspace.users.add_token(OP, "ci2", "editor") != token


def test_the_local_user_name_is_reserved_for_single_user_mode(workspace):
    assert Actor.local().name == LOCAL_USER
    assert workspace.users.role_of(Actor.local()) == "admin"
    workspace.users.add(OP, "alice", "admin")
    assert workspace.users.role_of(Actor.local()) is None


def test_the_samples_are_seeded_once(workspace):
    from sample_models import sample_registry_files

    seeded = workspace.seed(sample_registry_files())
    assert sorted(v.name for v in seeded) == ["cancer", "sentiment", "shapes"]
    assert all(v.version == 1 for v in seeded)
    assert workspace.seed(sample_registry_files()) == []
    assert sorted(v.name for v in workspace.registry.list(Actor.local())) == ["cancer", "sentiment", "shapes"]
    with workspace.core.db.transaction() as s:
        assert s.scalar(select(Run.id)) is None


def test_the_session_key_is_made_once_and_kept_private(workspace, monkeypatch):
    monkeypatch.delenv("GLASSBOX_SESSION_KEY", raising=False)
    key = workspace.session_key()
    assert len(key) >= 48 and workspace.session_key() == key
    path = Path(workspace.home) / "session_key"
    assert path.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("GLASSBOX_SESSION_KEY", "from-the-environment")
    assert workspace.session_key() == "from-the-environment"


def test_unique_ids_for_runs(workspace):
    workspace.registry.register(OP, "m", b"model-one", "m.safetensors")
    ids = {workspace.runs.save(OP, record(f"r{i}")).id for i in range(5)}
    assert len(ids) == 5 and all(len(i) <= 32 for i in ids)
