"""Protected aliases (issue 24) on SQLite and on PostgreSQL: an admin protects ``m@production`` and
names its approvers; then nobody moves it by `set_alias` or ``register(alias=)`` (``models add
--alias``), and only an admin or an approver moves it, through an approving decision that carries a
justification and the comparison run it was made on. Every refusal writes nothing; every write is
audited. One workspace per backend for the module (`team`); each test leaves ``m@production`` on v1.
"""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select, text

from explain.errors import NotFound, PermissionDenied, UsageError
from explain.workspace import Actor, RunRecord, open_workspace
from explain.workspace.schema import AuditEntry, Base

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:tester", operator=True)
ADA, ED, RITA, VIC = Actor("ada"), Actor("ed"), Actor("rita"), Actor("vic")  # admin, editor, reviewer, viewer
PAULA, EVE = Actor("paula"), Actor("eve")  # the approvers: a reviewer and an editor


class Team:
    def __init__(self, ws, comparison: str, other_model_run: str, structure_run: str):
        self.ws, self.comparison, self.other_model_run, self.structure_run = ws, comparison, other_model_run, structure_run

    def snapshot(self) -> dict[str, list[str]]:
        with self.ws.engine.connect() as conn:
            return {t.name: sorted(repr(tuple(r)) for r in conn.execute(select(t))) for t in Base.metadata.sorted_tables}

    def audit(self) -> list[AuditEntry]:
        with self.ws.core.db.transaction() as s:
            return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))

    def production(self, model: str = "m") -> int:
        return self.ws.registry.resolve(OP, f"{model}@production").version


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))  # tests.workspace_db.BACKENDS
def team(request, tmp_path_factory):
    """m@v1 (production) and m@v2; a comparison run of m@v2 against production, one of model ``other``
    and a structure run of m@v2; users of every role; m@production protected by ada, approvers paula, eve."""
    if request.param == "sqlite":
        url, server = f"sqlite:///{tmp_path_factory.mktemp('pa') / 'glassbox.db'}", None
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database()
    ws = open_workspace(url, home=tmp_path_factory.mktemp("pa-home"))
    ws.users.add(OP, "ada", "admin")
    for name, role in (("ed", "editor"), ("rita", "reviewer"), ("vic", "viewer"), ("paula", "reviewer"),
                       ("eve", "editor")):
        ws.users.add(ADA, name, role)
    ws.users.add_token(ADA, "paula", "reviewer")  # a token named like an approver borrows nothing
    ws.registry.register(ED, "m", b"one", "m.safetensors", alias="production")
    ws.registry.register(ED, "m", b"two", "m.safetensors", alias="candidate")
    ws.registry.register(ED, "other", b"three", "o.safetensors")
    comparison = ws.runs.save(ED, RunRecord(page="comparison", model="m", version=2, title="v2 vs production",
                                            params={"a": "m@v2", "b": "m@production"})).id
    other = ws.runs.save(ED, RunRecord(page="comparison", model="other", version=1, title="other",
                                       params={"a": "other@v1", "b": "other@v1"})).id
    structure = ws.runs.save(ED, RunRecord(page="structure", model="m", version=2, title="layers")).id
    ws.registry.protect(ADA, "m", "production", ["paula", "eve"])
    yield Team(ws, comparison, other, structure)
    ws.close()
    if server is not None:
        server.drop_database(url)


def test_the_admin_protected_it_and_listings_show_the_approvers(team):
    ws = team.ws
    [p] = ws.registry.protections(VIC)
    assert (p.model, p.alias, p.approvers, p.created_by) == ("m", "production", ["eve", "paula"], "ada")
    assert ws.registry.version(VIC, "m", 1).protected == {"production": ["eve", "paula"]}
    assert ws.registry.version(VIC, "m", 2).protected == {}  # candidate is not protected
    assert ws.registry.protections(VIC, "other") == []
    [row] = [e for e in team.audit() if e.action == "alias.protect"]
    assert (row.actor, row.object_id, row.before, row.after) == ("ada", "m@production", None,
                                                                 {"approvers": ["eve", "paula"]})


@pytest.mark.parametrize("who", [ED, RITA, VIC, PAULA, EVE, Actor("paula", token=True)], ids=str)
def test_only_an_admin_protects_or_unprotects(team, who):
    before = team.snapshot()
    with pytest.raises(PermissionDenied, match="may not protect alias"):
        team.ws.registry.protect(who, "m", "production", [who.name])
    with pytest.raises(PermissionDenied, match="may not protect alias"):
        team.ws.registry.unprotect(who, "m", "production")
    assert team.snapshot() == before


def test_approvers_are_accounts_that_may_decide(team):
    before = team.snapshot()
    with pytest.raises(UsageError, match=r"vic \(viewer\) may not decide"):
        team.ws.registry.protect(ADA, "m", "production", ["paula", "vic"])
    with pytest.raises(NotFound, match="No user 'nobody'"):
        team.ws.registry.protect(ADA, "m", "production", ["nobody"])
    with pytest.raises(NotFound, match="No model 'ghost'"):
        team.ws.registry.protect(ADA, "ghost", "production")
    with pytest.raises(UsageError, match="reads as a version number"):
        team.ws.registry.protect(ADA, "m", "v2")
    assert team.snapshot() == before


@pytest.mark.parametrize("who,says", [
    (VIC, "may not edit registry"), (RITA, "may not edit registry"), (PAULA, "may not edit registry"),
    (ED, r"only admins and its approvers \(eve, paula\)"),
    (EVE, "only through an approving decision"), (ADA, "only through an approving decision"),
    (OP, "only through an approving decision"),
], ids=lambda x: str(x)[:30])
def test_nobody_moves_it_by_set_alias_or_models_add(team, who, says):
    before, blobs = team.snapshot(), set(team.ws.core.blobs.root.rglob("*"))
    with pytest.raises(PermissionDenied, match=says):
        team.ws.registry.set_alias(who, "m", "production", 2)
    with pytest.raises(PermissionDenied):  # what `models add FILE --name m --alias production` calls
        team.ws.registry.register(who, "m", b"four", "m.safetensors", alias="production")
    assert team.snapshot() == before and set(team.ws.core.blobs.root.rglob("*")) == blobs  # no version 3
    assert team.production() == 1


@pytest.mark.parametrize("who,error,says", [
    (VIC, PermissionDenied, "may not decide"),
    (RITA, PermissionDenied, r"only admins and its approvers \(eve, paula\)"),
    (ED, PermissionDenied, r"only admins and its approvers \(eve, paula\)"),
    (Actor("paula", token=True), PermissionDenied, "only admins and its approvers"),
], ids=lambda x: str(x)[:30])
def test_a_decision_by_anyone_else_moves_nothing(team, who, error, says):
    before = team.snapshot()
    with pytest.raises(error, match=says):
        team.ws.review.decide(who, "m", 2, "approve", "better on every input", move_alias="production",
                              comparison_run=team.comparison)
    assert team.snapshot() == before and team.production() == 1


def test_an_approver_needs_a_justification_and_a_comparison_of_this_model(team):
    ws, before = team.ws, team.snapshot()
    cases = [
        (dict(note="  ", comparison_run=team.comparison), UsageError, "needs a justification"),
        (dict(note="better", comparison_run=None), UsageError, "needs the comparison run"),
        (dict(note="better", comparison_run="nosuchrun"), NotFound, "No saved run 'nosuchrun'"),
        (dict(note="better", comparison_run=team.comparison + "x" * 30), NotFound, "No saved run"),
        (dict(note="better", comparison_run=team.other_model_run), UsageError, "compares other, not m"),
        (dict(note="better", comparison_run=team.structure_run), UsageError, "is a structure run, not a comparison"),
    ]
    for kwargs, error, says in cases:
        with pytest.raises(error, match=says):
            ws.review.decide(PAULA, "m", 2, "approve", move_alias="production", **kwargs)
    assert team.snapshot() == before and team.production() == 1


def test_an_approver_moves_it_through_a_decision_and_the_audit_log_says_so(team):
    ws, n = team.ws, len(team.audit())
    d = ws.review.decide(PAULA, "m", 2, "approve", "  agreement 1.0, maps unchanged  ", move_alias="production",
                         comparison_run=team.comparison)
    assert (d.author, d.verdict, d.note, d.alias, d.comparison_run) == (
        "paula", "approve", "agreement 1.0, maps unchanged", "production", team.comparison)
    assert team.production() == 2
    assert ws.review.decisions(VIC, "m", 2)[-1] == d and d.to_dict()["comparison_run"] == team.comparison
    from explain.report.review import build_review_section, review_record

    section = build_review_section(review_record(ws, VIC, "m", 2))
    assert "<th>comparison run</th>" in section.to_html() and f"<td>{team.comparison}</td>" in section.to_html()
    rows = [(e.actor, e.action, e.object_id, e.before, e.after) for e in team.audit()[n:]]
    assert rows == [
        ("paula", "alias.set", "m@production", {"version": 1}, {"version": 2}),
        ("paula", "decision.approve", "m@v2", None, {"note": "agreement 1.0, maps unchanged", "alias": "production",
                                                     "comparison": team.comparison}),
    ]
    # the other approver (an editor) and an admin, each through a decision of their own
    ws.review.decide(EVE, "m", 1, "approve", "rolled back", move_alias="production", comparison_run=team.comparison)
    assert team.production() == 1
    ws.review.decide(ADA, "m", 1, "approve", "confirmed", move_alias="production", comparison_run=team.comparison)
    assert team.production() == 1 and [e.actor for e in team.audit()[-2:]] == ["ada", "ada"]


def test_any_decision_may_record_its_comparison_and_other_aliases_move_as_before(team):
    ws = team.ws
    d = ws.review.decide(RITA, "m", 2, "request_changes", "", comparison_run=team.comparison)
    assert (d.comparison_run, d.alias) == (team.comparison, None)
    assert ws.review.decide(RITA, "m", 2, "approve").comparison_run is None
    ws.registry.set_alias(ED, "m", "candidate", 1)  # unprotected: an editor, no decision
    ws.review.decide(RITA, "m", 2, "approve", move_alias="candidate")  # a reviewer, no note, no comparison
    assert ws.registry.resolve(VIC, "m@candidate").version == 2
    ws.registry.register(ED, "other", b"five", "o.safetensors", alias="production")  # other's is unprotected
    assert team.production("other") == 2


def test_unprotected_it_moves_as_before_and_protecting_again_replaces_the_approvers(team):
    ws = team.ws
    ws.registry.unprotect(ADA, "m", "production")
    assert ws.registry.protections(VIC) == [] and ws.registry.version(VIC, "m", 1).protected == {}
    ws.registry.set_alias(ED, "m", "production", 2)
    ws.registry.set_alias(ED, "m", "production", 1)
    with pytest.raises(NotFound, match="is not protected"):
        ws.registry.unprotect(ADA, "m", "production")
    ws.registry.protect(ADA, "m", "production", ["paula"])
    ws.registry.protect(ADA, "m", "production", ["paula", "eve"])
    rows = [(e.actor, e.action, e.before, e.after) for e in team.audit() if e.action.startswith("alias.")][-5:]
    assert rows == [
        ("ada", "alias.unprotect", {"approvers": ["eve", "paula"]}, None),
        ("ed", "alias.set", {"version": 1}, {"version": 2}),
        ("ed", "alias.set", {"version": 2}, {"version": 1}),
        ("ada", "alias.protect", None, {"approvers": ["paula"]}),
        ("ada", "alias.protect", {"approvers": ["paula"]}, {"approvers": ["eve", "paula"]}),
    ]
    with pytest.raises(PermissionDenied):
        ws.registry.set_alias(ED, "m", "production", 2)


def test_migrating_from_the_previous_head_keeps_the_data(db_url, tmp_path):
    """A workspace at 0004 with a model, an alias and a decision, migrated to 0005: all kept, the
    decision without a comparison, nothing protected, and protecting works."""
    from alembic import command
    from alembic.config import Config

    from explain.workspace.db import MIGRATIONS, head_revision, migrate

    engine = create_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_vetting_results")
    with engine.begin() as conn:
        for sql in ("INSERT INTO models (id, name, created_by, created_at) VALUES (1, 'm', 'ed', '2026-01-01')",
                    "INSERT INTO model_versions (id, model_id, number, sha256, filename, size, created_by, created_at) "
                    f"VALUES (1, 1, 1, '{'a' * 64}', 'm.pt', 3, 'ed', '2026-01-01')",
                    "INSERT INTO aliases (id, model_id, name, version_id) VALUES (1, 1, 'production', 1)",
                    "INSERT INTO decisions (id, version_id, verdict, note, alias, author, created_at) "
                    "VALUES (1, 1, 'approve', 'fine', 'production', 'rita', '2026-01-02')"):
            conn.execute(text(sql))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision() == "0005_protected_aliases"
    engine.dispose()
    ws = open_workspace(db_url, home=tmp_path / "home")
    try:
        [d] = ws.review.decisions(OP, "m")
        assert (d.verdict, d.note, d.alias, d.author, d.comparison_run) == ("approve", "fine", "production", "rita", None)
        assert ws.registry.resolve(OP, "m@production").version == 1 and ws.registry.protections(OP) == []
        ws.registry.protect(OP, "m", "production")
        assert ws.registry.version(OP, "m", 1).protected == {"production": []}
    finally:
        ws.close()


def test_the_command_line_protects_refuses_decides_and_unprotects(tmp_path, monkeypatch, capsys):
    """``models protect|list|add --alias|decide|unprotect`` through `explain.cli.main` (the operator:
    admin), SQLite: one JSON object per call, exit 2 / 3 with one line on stderr."""
    import json

    from explain.cli import main
    from sample_models import sample_file

    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GLASSBOX_DATABASE_URL", raising=False)

    def cli(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert (out == "") == (code != 0) and len(err.strip().splitlines()) == (code != 0), (out, err)
        return code, json.loads(out) if code == 0 else err.strip()

    assert cli("models", "list", "--name", "shapes")[1]["protected"] == []  # seeds the samples
    ws = open_workspace(home=tmp_path / "home")
    ws.users.add(OP, "ada", "admin")
    ws.users.add(ADA, "paula", "reviewer")
    run = ws.runs.save(OP, RunRecord(page="comparison", model="shapes", version=1, title="v1 vs v1",
                                     params={"a": "shapes@v1", "b": "shapes@v1"})).id
    ws.close()

    code, out = cli("models", "protect", "shapes", "production", "--approvers", "paula, ")
    assert code == 0 and (out["model"], out["alias"], out["approvers"]) == ("shapes", "production", ["paula"])
    assert [(p["alias"], p["approvers"]) for p in cli("models", "list", "--name", "shapes")[1]["protected"]] == [
        ("production", ["paula"])]
    code, err = cli("models", "add", str(sample_file("shapes")), "--name", "shapes", "--alias", "production")
    assert code == 3 and "shapes@production is protected: it moves only through an approving decision" in err
    code, err = cli("models", "decide", "shapes@v1", "--verdict", "approve", "--move-alias", "production",
                    "--comparison", run)
    assert code == 2 and "needs a justification" in err
    code, out = cli("models", "decide", "shapes@v1", "--verdict", "approve", "--note", "same file",
                    "--comparison", run, "--move-alias", "production")
    assert code == 0 and (out["version"], out["alias"], out["comparison_run"], out["note"]) == (
        1, "production", run, "same file")
    assert cli("models", "list", "--name", "shapes")[1]["models"][0]["protected"] == {"production": ["paula"]}
    assert cli("models", "unprotect", "shapes", "production")[1] == {"unprotected": "shapes@production"}
    code, err = cli("models", "unprotect", "shapes", "production")
    assert code == 2 and "is not protected" in err
    assert cli("models", "decide", "shapes@v1", "--verdict", "lgtm")[0] == 2
