"""The workspace on the command line: `python -m explain users|models|runs|tokens`.

Most calls go through `explain.cli.main` in this process (a CLI process takes seconds to
start); `test_real_processes` runs the real command on both backends. Each test has its own
``GLASSBOX_HOME`` (SQLite at its default place inside it) or ``GLASSBOX_DATABASE_URL``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from explain.cli import main
from explain.workspace import Actor, RunRecord, open_workspace
from explain.workspace.schema import ApiToken
from sample_models import SAMPLE_NAMES, sample_file

pytest_plugins = ["tests.workspace_db"]

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


@pytest.fixture
def cli(db_url, tmp_path, monkeypatch, capsys):
    """``cli(*argv, stdin="")`` -> (exit code, parsed stdout or None, stderr) against a fresh workspace:
    SQLite at its default place ``$GLASSBOX_HOME/glassbox.db``, or PostgreSQL by ``GLASSBOX_DATABASE_URL``."""
    home = tmp_path / "home"
    monkeypatch.setenv("GLASSBOX_HOME", str(home))
    if db_url.startswith("postgresql"):
        monkeypatch.setenv("GLASSBOX_DATABASE_URL", db_url)
    else:
        monkeypatch.delenv("GLASSBOX_DATABASE_URL", raising=False)

    def run(*argv: str, stdin: str = ""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        if code == 0:
            assert err == ""
            return code, json.loads(out), err
        assert out == "", "an error prints nothing on stdout"
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return code, None, err.strip()

    run.home = home
    run.url = db_url if db_url.startswith("postgresql") else f"sqlite:///{home / 'glassbox.db'}"
    return run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_users_add_list_set_role_remove(cli):
    code, _, err = cli("users", "add", "vera", "--role", "viewer", stdin="long enough\n")
    assert (code, err) == (2, "error: The first account must be an admin. Run `python -m explain users add vera --role admin` first.")
    code, alice, _ = cli("users", "add", "alice", "--role", "admin", "--email", "a@example.org", stdin="correct horse\n")
    assert code == 0
    assert {k: alice[k] for k in ("name", "role", "email", "has_password")} == {
        "name": "alice", "role": "admin", "email": "a@example.org", "has_password": True}
    assert cli("users", "add", "bob", "--role", "viewer", stdin="battery staple\r\n")[0] == 0
    # SQLite by default in GLASSBOX_HOME; with GLASSBOX_DATABASE_URL nothing there
    assert (cli.home / "glassbox.db").exists() == cli.url.startswith("sqlite")

    ws = open_workspace(cli.url, home=cli.home)
    try:
        assert ws.users.verify_password("alice", "correct horse")
        assert ws.users.verify_password("bob", "battery staple")  # the line ending is not the password
        assert not ws.users.verify_password("bob", "battery staple\r")
        assert [(e.action, e.object_id) for e in ws.audit.rows(OP)][-2:] == [("user.add", "alice"), ("user.add", "bob")]
        assert all(e.actor.startswith("cli:") for e in ws.audit.rows(OP) if e.action == "user.add")
    finally:
        ws.close()

    code, listed, _ = cli("users", "list")
    assert [(u["name"], u["role"]) for u in listed["users"]] == [("alice", "admin"), ("bob", "viewer")]
    assert cli("users", "set-role", "bob", "editor")[1]["role"] == "editor"
    assert cli("users", "remove", "bob")[1] == {"removed": "bob"}
    code, _, err = cli("users", "remove", "alice")
    assert code == 2 and "last admin" in err
    code, _, err = cli("users", "set-role", "alice", "viewer")
    assert code == 2 and "last admin" in err
    assert [u["name"] for u in cli("users", "list")[1]["users"]] == ["alice"]

    # usage errors: exit 2, one line on stderr
    assert cli("users", "add", "carol", "--role", "viewer", stdin="")[2].startswith("error: No password on stdin")
    assert cli("users", "add", "carol", "--role", "viewer", stdin="short\n")[0] == 2
    assert cli("users", "add", "carol", "--role", "owner", stdin="long enough\n")[0] == 2
    assert cli("users", "add", "alice", "--role", "viewer", stdin="long enough\n")[0] == 2  # exists
    assert cli("users", "remove", "ghost")[0] == 2
    assert cli("users")[0] == 2
    assert cli("users", "frobnicate")[0] == 2
    assert [u["name"] for u in cli("users", "list")[1]["users"]] == ["alice"]


def test_a_new_workspace_has_the_samples_and_models_add_registers_versions(cli, tmp_path):
    code, listed, _ = cli("models", "list")
    assert [(m["name"], m["version"], m["sha256"]) for m in listed["models"]] == sorted(
        (name, 1, _sha(sample_file(name))) for name in SAMPLE_NAMES)

    shapes, cancer = sample_file("shapes"), sample_file("cancer")
    code, added, _ = cli("models", "add", str(shapes), "--name", "mine", "--alias", "candidate")
    assert code == 0
    assert (added["name"], added["version"], added["sha256"], added["aliases"]) == ("mine", 1, _sha(shapes), ["candidate"])
    again = cli("models", "add", str(shapes), "--name", "mine")[1]
    assert (again["version"], again["sha256"]) == (1, _sha(shapes))  # the same file is the same version
    second = cli("models", "add", str(cancer), "--name", "mine", "--alias", "candidate")[1]
    assert (second["version"], second["sha256"], second["aliases"]) == (2, _sha(cancer), ["candidate"])
    mine = cli("models", "list", "--name", "mine")[1]["models"]
    assert [(m["version"], m["aliases"]) for m in mine] == [(1, []), (2, ["candidate"])]
    assert len(cli("models", "list")[1]["models"]) == len(SAMPLE_NAMES) + 2

    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(100))
    code, _, err = cli("models", "add", str(junk), "--name", "junk")
    assert code == 3 and err.startswith("refused: ") and "not a model format" in err
    assert cli("models", "add", str(tmp_path / "missing.pt"), "--name", "x")[0] == 3
    assert cli("models", "add", str(shapes), "--name", "bad name")[0] == 2
    assert cli("models", "add", str(shapes))[0] == 2  # --name is required
    assert cli("models")[0] == 2
    assert len(cli("models", "list")[1]["models"]) == len(SAMPLE_NAMES) + 2  # the refusals wrote nothing


def test_runs_list_and_show(cli):
    assert cli("runs", "list")[1] == []  # seeds the samples too
    ws = open_workspace(cli.url, home=cli.home)
    try:
        ws.users.add(OP, "alice", "admin")
        ws.users.add(OP, "eddie", "editor")
        ws.users.add(OP, "rita", "reviewer")
        x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
        first = ws.runs.save(Actor("eddie"), RunRecord(page="output", model="shapes", version=1, title="saliency",
                                                       method="saliency", inputs={"x": x}, results={"attr": x * 2},
                                                       params={"abs": True}, target=1))
        second = ws.runs.save(Actor("eddie"), RunRecord(page="structure", model="cancer", version=1, title="layers",
                                                        results={"dead": np.zeros(7)}))
        ws.review.post(Actor("rita"), first.id, "background?", anchor_kind="input", anchor="0")
        ws.review.decide(Actor("rita"), "shapes", 1, "approve", "fine", move_alias="production")
    finally:
        ws.close()

    code, runs, _ = cli("runs", "list")
    assert code == 0 and isinstance(runs, list)
    assert {r["id"] for r in runs} == {first.id, second.id}
    for r in runs:
        assert {"id", "model", "version", "method", "author", "created"} <= set(r)
    by_id = {r["id"]: r for r in runs}
    assert {k: by_id[first.id][k] for k in ("model", "version", "method", "author")} == {
        "model": "shapes", "version": 1, "method": "saliency", "author": "eddie"}
    assert {k: by_id[second.id][k] for k in ("model", "version", "method", "author")} == {
        "model": "cancer", "version": 1, "method": None, "author": "eddie"}
    assert [r["created"] for r in runs] == sorted((r["created"] for r in runs), reverse=True)
    assert [r["id"] for r in cli("runs", "list", "--model", "cancer")[1]] == [second.id]

    code, shown, _ = cli("runs", "show", first.id)
    assert (shown["id"], shown["title"], shown["params"], shown["target"]) == (first.id, "saliency", {"abs": True}, 1)
    assert shown["inputs"] == {"x": [2, 3, 4, 4]} and shown["results"] == {"attr": [2, 3, 4, 4]}
    assert [(c["author"], c["body"], c["anchor_kind"], c["anchor"]) for c in shown["comments"]] == [
        ("rita", "background?", "input", "0")]
    assert [(d["verdict"], d["alias"], d["author"]) for d in shown["decisions"]] == [("approve", "production", "rita")]

    code, _, err = cli("runs", "show", "no-such-run")
    assert code == 2 and err.startswith("error: No saved run 'no-such-run'.")
    assert cli("runs")[0] == 2


def test_tokens_add_prints_the_token_once_and_stores_its_sha256(cli):
    code, out, _ = cli("tokens", "add", "ci", "--role", "editor")
    assert code == 0 and (out["name"], out["role"]) == ("ci", "editor")
    token = out["token"]
    ws = open_workspace(cli.url, home=cli.home)
    try:
        with ws.core.db.transaction() as s:
            rows = list(s.scalars(select(ApiToken)))
        assert [(r.name, r.role, r.token_sha256) for r in rows] == [("ci", "editor", hashlib.sha256(token.encode()).hexdigest())]
        assert ws.users.token_identity(token) == ("ci", "editor")
    finally:
        ws.close()
    if not cli.url.startswith("postgresql"):  # nowhere in the database files, WAL included
        stored = b"".join(p.read_bytes() for p in cli.home.glob("glassbox.db*"))
        assert token.encode() not in stored and hashlib.sha256(token.encode()).hexdigest().encode() in stored
    code, _, err = cli("tokens", "add", "ci", "--role", "viewer")
    assert code == 2 and "exists" in err
    assert cli("tokens", "add", "ci2", "--role", "root")[0] == 2
    assert cli("tokens")[0] == 2
    second = cli("tokens", "add", "ci2", "--role", "viewer")[1]["token"]
    assert second != token


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_real_processes(backend, tmp_path, request):
    """The real `python -m explain` reading the password from a pipe, on each backend."""
    env = {**os.environ, "GLASSBOX_HOME": str(tmp_path / "home")}
    env.pop("GLASSBOX_DATABASE_URL", None)
    server = None
    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        env["GLASSBOX_DATABASE_URL"] = url = server.create_database()
    else:
        url = f"sqlite:///{tmp_path / 'home' / 'glassbox.db'}"
    try:
        added = subprocess.run([sys.executable, "-m", "explain", "users", "add", "alice", "--role", "admin"],
                               input="piped password\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["name"] == "alice" and added.stderr == ""
        refused = subprocess.run([sys.executable, "-m", "explain", "runs", "show", "nope"],
                                 capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert (refused.returncode, refused.stdout) == (2, "")
        assert len(refused.stderr.strip().splitlines()) == 1 and "No saved run" in refused.stderr
        ws = open_workspace(url, home=tmp_path / "home")
        try:
            assert ws.users.verify_password("alice", "piped password")
            assert sorted(v.name for v in ws.registry.list(OP)) == sorted(SAMPLE_NAMES)
        finally:
            ws.close()
    finally:
        if server is not None:
            server.drop_database(url)
