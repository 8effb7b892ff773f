"""Submitting a job (issue 21): `explain.service.client.submit` is the one way into the queue, so
the one per-caller limit (``GLASSBOX_MAX_JOBS``) applies alike to a page (`ui.jobs`), the API and
the CLI, and nothing else calls `Jobs.submit`."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from explain.cli import main
from explain.cli.workspace_arg import cli_actor
from explain.errors import QueueFull, UsageError
from explain.service import client as client_mod
from explain.service.api import create_app
from explain.workspace import Actor
from sample_models import load_sample, sample_inputs

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)
LIMIT = 2


@pytest.fixture
def limited(home, monkeypatch):
    """The app's workspace with the limit at `LIMIT` and no worker anywhere: jobs stay queued."""
    monkeypatch.setenv("GLASSBOX_MAX_JOBS", str(LIMIT))
    monkeypatch.setenv("GLASSBOX_EXTERNAL_WORKER", "1")
    tmp, ws = home
    ws.users.add(OP, "admin", "admin")
    ws.users.add(OP, "alice", "editor")
    return tmp, ws


def test_the_limit_is_the_one_setting_with_the_old_api_name_as_fallback(monkeypatch):
    from explain.config import max_jobs_per_caller

    monkeypatch.delenv("GLASSBOX_MAX_JOBS", raising=False)
    monkeypatch.delenv("GLASSBOX_API_MAX_JOBS", raising=False)
    assert max_jobs_per_caller() == 16
    monkeypatch.setenv("GLASSBOX_API_MAX_JOBS", "5")
    assert max_jobs_per_caller() == 5
    monkeypatch.setenv("GLASSBOX_MAX_JOBS", "3")
    assert max_jobs_per_caller() == 3


def test_an_unknown_kind_is_refused_before_anything_is_queued(limited):
    _, ws = limited
    with pytest.raises(UsageError, match="Unknown job kind"):
        client_mod.submit(ws, Actor("alice"), "nope", {})
    assert ws.jobs.list(OP) == []


def test_the_ui_path_stops_at_the_limit(limited, monkeypatch):
    import ui.jobs as ui_jobs
    from ui import workspace as team

    _, ws = limited
    monkeypatch.setattr(team, "workspace", lambda: ws)
    monkeypatch.setattr(team, "actor", lambda: Actor("alice"))
    monkeypatch.setattr(ui_jobs, "registered_version", lambda model: ws.registry.version(OP, "cancer", 1))
    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:2]
    for _ in range(LIMIT):
        ui_jobs.submit_explain(model, x, [("saliency", {})], None)
    with pytest.raises(QueueFull, match=f"the limit is {LIMIT}"):
        ui_jobs.submit_explain(model, x, [("saliency", {})], None)


def test_the_api_answers_429_at_the_same_limit(limited):
    _, ws = limited
    token = ws.users.add_token(OP, "editor", "editor")
    api = TestClient(create_app(ws, worker=False), raise_server_exceptions=False)
    body = {"model": "cancer", "instances": sample_inputs("cancer")["inputs"][:1].tolist(),
            "parameters": {"method": "saliency"}}
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(LIMIT):
        assert api.post("/v1/jobs", headers=headers, json=body).status_code == 202
    r = api.post("/v1/jobs", headers=headers, json=body)
    assert r.status_code == 429 and f"the limit is {LIMIT}" in r.json()["error"]


def test_the_cli_exits_3_at_the_same_limit(limited, capsys):
    tmp, ws = limited
    for _ in range(LIMIT):  # the operator's jobs already queued (the CLI would wait for each one)
        client_mod.submit(ws, cli_actor(), "explain", {}, title="queued")
    np.save(tmp / "x.npy", sample_inputs("cancer")["inputs"][:2])
    code = main(["attribute", "cancer", "--inputs", str(tmp / "x.npy"), "--method", "saliency",
                 "--out", str(tmp / "o.npz")])
    err = capsys.readouterr().err
    assert code == 3 and f"the limit is {LIMIT}" in err, err
    assert not (tmp / "o.npz").exists()


def _calls_jobs_submit(tree: ast.AST) -> list[tuple[int, str]]:
    """Every ``<anything>.jobs.submit(...)`` / ``Jobs.submit(...)`` call, with its enclosing function."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr == "submit":
                owner = child.func.value
                if (isinstance(owner, ast.Attribute) and owner.attr == "jobs") or \
                        (isinstance(owner, ast.Name) and owner.id in ("jobs", "Jobs")):
                    found.append((child.lineno, inner))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_jobs_submit_is_called_only_by_client_submit():
    files = [ROOT / "app.py", *(ROOT / "explain").rglob("*.py"), *(ROOT / "ui").rglob("*.py"),
             *(ROOT / "pages").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    calls = {}
    for path in files:
        for line, where in _calls_jobs_submit(ast.parse(path.read_text(), str(path))):
            calls[f"{path.relative_to(ROOT)}:{line}"] = where
    assert list(calls.values()) == ["submit"], calls
    (only,) = calls
    assert only.startswith("explain/service/client.py:")
