"""The HTTP API (`explain.service.api`): every endpoint and error code through FastAPI's TestClient,
``:explain`` equal to ``python -m explain attribute``, and a real ``python -m explain serve`` answering
8 concurrent ``:explain`` requests each with its own inputs' results."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from explain.cli import main
from explain.output.methods import get_method
from explain.service.api import create_app
from explain.service.worker import stop_embedded
from explain.workspace import Actor, open_workspace
from sample_models import load_sample, sample_inputs, sample_registry_files

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)
X = sample_inputs("cancer")["inputs"]  # [N, 30]


def _workspace(tmp_path):
    ws = open_workspace(f"sqlite:///{tmp_path / 'glassbox.db'}", home=tmp_path / "home")
    ws.seed(sample_registry_files())
    tokens = {role: ws.users.add_token(OP, role, role) for role in ("viewer", "editor", "admin")}
    tokens["editor2"] = ws.users.add_token(OP, "editor2", "editor")
    return ws, tokens


@pytest.fixture
def api(tmp_path):
    ws, tokens = _workspace(tmp_path)
    client = TestClient(create_app(ws, worker=True), raise_server_exceptions=False)
    yield ws, client, {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
    stop_embedded(ws)
    ws.close()


@pytest.fixture
def idle_api(tmp_path):
    """No worker: jobs stay queued. At most one active job per token, bodies up to 4 kB."""
    ws, tokens = _workspace(tmp_path)
    client = TestClient(create_app(ws, worker=False, max_jobs=1, max_body=4096), raise_server_exceptions=False)
    yield ws, client, {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
    ws.close()


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# -- models ---------------------------------------------------------------------------------------
def test_list_and_get_models_by_name_version_and_alias(api):
    ws, client, h = api
    assert client.get("/v1/models", headers=h["viewer"]).json() == {"models": ["cancer", "sentiment", "shapes"]}
    ws.registry.set_alias(OP, "shapes", "production", 1)
    for ref in ("shapes", "shapes@v1", "shapes@production"):
        body = client.get(f"/v1/models/{ref}", headers=h["viewer"]).json()
        assert (body["name"], body["version"], body["ref"], body["ready"]) == ("shapes", 1, "shapes@v1", True)
        assert body["aliases"] == ["production"]
    assert "no version" in _one_line_error(client.get("/v1/models/shapes@v9", headers=h["viewer"]), 404)
    assert "No model 'nope'" in _one_line_error(client.get("/v1/models/nope", headers=h["viewer"]), 404)


def test_missing_or_wrong_token_is_401(api):
    _, client, _ = api
    assert "Missing token" in _one_line_error(client.get("/v1/models"), 401)
    assert _one_line_error(client.get("/v1/models", headers={"Authorization": "Bearer gbx_wrong"}), 401) \
        == "Unknown token."
    assert _one_line_error(client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
    assert _one_line_error(client.post("/v1/models/cancer:predict", json={"instances": []}), 401)


def test_openapi_describes_every_endpoint(api):
    _, client, _ = api
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/models/{name}", "/v1/models/{name}:predict", "/v1/models/{name}:explain",
            "/v1/jobs", "/v1/jobs/{job_id}"} <= set(paths)
    assert client.get("/docs").status_code == 200


# -- predict ----------------------------------------------------------------------------------------
def test_predict_returns_the_models_probabilities_for_a_viewer(api):
    _, client, h = api
    r = client.post("/v1/models/cancer@v1:predict", headers=h["viewer"], json={"instances": X[:3].tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], load_sample("cancer").predict_proba(X[:3]), atol=1e-6)
    single = client.post("/v1/models/cancer:predict", headers=h["viewer"], json={"instances": X[0].tolist()})
    assert len(single.json()["predictions"]) == 1  # one instance given without its batch axis


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 422, "JSON"),
    (b"[]", 422, "object"),  # pydantic's JSON-mode wording (the route parses its body itself)
    (b'{"rows": [[1]]}', 422, "instances"),
    (b'{"instances": [[1, 2]]}', 400, "expects (30,)"),  # a shape this model does not take: 400
    (b'{"instances": [["a", "b"]]}', 400, "rectangular array of numbers"),
    (b'{"instances": [[1, 2], [3]]}', 400, "rectangular"),
    (b'{"instances": []}', 400, "instances is empty"),
    (b'{"instances": [[1e999]]}', 400, "NaN or infinite"),
])
def test_malformed_predict_bodies_get_a_one_line_reason(api, body, status, words):
    _, client, h = api
    r = client.post("/v1/models/cancer:predict", headers={**h["viewer"], "Content-Type": "application/json"},
                    content=body)
    assert words in _one_line_error(r, status)


def test_body_over_the_cap_is_413(idle_api):
    _, client, h = idle_api
    big = {"instances": X[:40].tolist()}
    assert "over 4096 bytes" in _one_line_error(client.post("/v1/models/cancer:predict", headers=h["viewer"],
                                                            json=big), 413)

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"instances": ['
        for _ in range(400):
            yield b"[" + b"0.5, " * 29 + b"0.5],"
        yield b"[0]]}"

    r = client.post("/v1/models/cancer:predict", headers={**h["viewer"], "Content-Type": "application/json"},
                    content=chunks())
    assert "over 4096 bytes" in _one_line_error(r, 413)


def test_an_unexpected_failure_is_a_one_line_500(api, monkeypatch):
    ws, client, h = api
    monkeypatch.setattr(ws.registry, "list", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("boom\ndeep")))
    assert _one_line_error(client.get("/v1/models", headers=h["viewer"]), 500) == \
        "The request failed (RuntimeError: boom)."


# -- explain ----------------------------------------------------------------------------------------
def test_explain_equals_the_cli_and_saves_a_run_under_the_token(api, tmp_path, capsys):
    ws, client, h = api
    rows = X[:4]
    np.save(tmp_path / "x.npy", rows)
    assert main(["attribute", "cancer", "--inputs", str(tmp_path / "x.npy"), "--method", "integrated_gradients",
                 "--out", str(tmp_path / "cli.npz")]) == 0
    capsys.readouterr()
    cli = np.load(tmp_path / "cli.npz")
    r = client.post("/v1/models/cancer:explain", headers=h["editor"],
                    json={"instances": rows.tolist(), "parameters": {"method": "integrated_gradients", "target": None}})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([e["values"] for e in body["explanations"]])
    np.testing.assert_allclose(got, cli["values"], atol=1e-6)
    assert [e["target"] for e in body["explanations"]] == cli["targets"].tolist()
    np.testing.assert_allclose([e["completeness_error"] for e in body["explanations"]], cli["completeness_error"],
                               atol=1e-6)
    run = ws.runs.info(OP, body["run"])
    assert (run.author, run.page, run.model, run.method) == ("editor", "output", "cancer", "integrated_gradients")
    assert ws.jobs.get(OP, body["job"]).priority == "interactive"


def test_explain_with_a_target_and_method_parameters(api):
    _, client, h = api
    r = client.post("/v1/models/cancer:explain", headers=h["editor"],
                    json={"instances": X[:2].tolist(), "parameters": {"method": "saliency", "target": [1, 0]}})
    assert r.status_code == 200, r.text
    assert [e["target"] for e in r.json()["explanations"]] == [1, 0]
    want = get_method("saliency").explain(load_sample("cancer"), X[:2], target=np.array([1, 0]), use_cache=False)
    np.testing.assert_allclose([e["values"] for e in r.json()["explanations"]], want.values, atol=1e-6)


def test_explain_needs_an_editor_because_it_saves_a_run(api):
    ws, client, h = api
    r = client.post("/v1/models/cancer:explain", headers=h["viewer"], json={"instances": X[:1].tolist()})
    assert "may not save run" in _one_line_error(r, 403)
    assert ws.jobs.list(OP) == []


@pytest.mark.parametrize("parameters, status, words", [
    ({"method": "nope"}, 400, "Unknown method 'nope'"),
    ({"steps": 8}, 400, "parameters.method is required"),
    ({"method": "integrated_gradients", "steps": "many"}, 400, "must be int"),
    ({"method": "integrated_gradients", "wings": 2}, 400, "Unknown parameter(s): wings"),
    ({"method": "integrated_gradients", "target": "cat"}, 400, "parameters.target"),
    ({"method": "integrated_gradients", "target": [0, 1, 0]}, 400, "3 entries for 2 instances"),
    ({"method": "grad_cam"}, 400, "grad_cam"),
])
def test_malformed_explain_parameters_are_refused_before_queueing(api, parameters, status, words):
    ws, client, h = api
    r = client.post("/v1/models/cancer:explain", headers=h["editor"],
                    json={"instances": X[:2].tolist(), "parameters": parameters})
    assert words in _one_line_error(r, status)
    assert ws.jobs.list(OP) == []


# -- jobs -------------------------------------------------------------------------------------------
def _wait_done(client, headers, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_submit_a_job_follow_it_and_open_its_run(api):
    ws, client, h = api
    r = client.post("/v1/jobs", headers=h["editor"], json={"model": "cancer@v1", "instances": X[:3].tolist(),
                                                           "parameters": {"method": "saliency"}})
    assert r.status_code == 202 and set(r.json()) == {"job"}
    body = _wait_done(client, h["viewer"], r.json()["job"])  # any reader may follow it
    assert (body["status"], body["progress"], body["owner"], body["priority"]) == ("done", 1.0, "editor", "batch")
    saved = ws.runs.open(OP, body["run"])
    assert saved.results["0/values"].shape == (3, 30)


def test_jobs_errors_unknown_job_bad_priority_missing_model(api):
    _, client, h = api
    assert "No job" in _one_line_error(client.get("/v1/jobs/nope", headers=h["viewer"]), 404)
    assert "No job" in _one_line_error(client.delete("/v1/jobs/nope", headers=h["editor"]), 404)
    r = client.post("/v1/jobs", headers=h["editor"], json={"model": "cancer", "instances": X[:1].tolist(),
                                                           "parameters": {"method": "saliency"}, "priority": "now"})
    assert "priority" in _one_line_error(r, 422)
    r = client.post("/v1/jobs", headers=h["editor"], json={"instances": X[:1].tolist()})
    assert _one_line_error(r, 422) == "model: Field required"
    r = client.post("/v1/jobs", headers=h["viewer"], json={"model": "cancer", "instances": X[:1].tolist()})
    assert _one_line_error(r, 403)


def test_cancel_a_queued_job_owner_or_admin_only(idle_api):
    ws, client, h = idle_api
    job = client.post("/v1/jobs", headers=h["editor"], json={"model": "cancer", "instances": X[:1].tolist(),
                                                             "parameters": {"method": "saliency"}}).json()["job"]
    assert "may not cancel" in _one_line_error(client.delete(f"/v1/jobs/{job}", headers=h["editor2"]), 403)
    body = client.delete(f"/v1/jobs/{job}", headers=h["editor"]).json()
    assert body["status"] == "cancelled" and body["error"] == "cancelled by editor"
    other = client.post("/v1/jobs", headers=h["editor2"], json={"model": "cancer", "instances": X[:1].tolist(),
                                                                "parameters": {"method": "saliency"}}).json()["job"]
    assert client.delete(f"/v1/jobs/{other}", headers=h["admin"]).json()["status"] == "cancelled"


def test_more_active_jobs_than_the_token_may_have_is_429(idle_api):
    _, client, h = idle_api
    body = {"model": "cancer", "instances": X[:1].tolist(), "parameters": {"method": "saliency"}}
    assert client.post("/v1/jobs", headers=h["editor"], json=body).status_code == 202
    assert "limit is 1" in _one_line_error(client.post("/v1/jobs", headers=h["editor"], json=body), 429)
    assert client.post("/v1/jobs", headers=h["editor2"], json=body).status_code == 202  # per token


# -- a real server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_eight_concurrent_explains_each_with_its_own_inputs(tmp_path):
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    ws = open_workspace(url, home=home)
    token = ws.users.add_token(OP, "ci", "editor")
    port = _free_port()
    env = {**os.environ, "GLASSBOX_HOME": str(home), "GLASSBOX_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("GLASSBOX_EXTERNAL_WORKER", None)
    server = subprocess.Popen([sys.executable, "-m", "explain", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _request(f"{base}/v1/models", token)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        answers: dict[int, tuple[int, dict]] = {}

        def ask(i: int) -> None:
            rows = X[[i, i + 8]]
            answers[i] = _request(f"{base}/v1/models/cancer:explain", token,
                                  {"instances": rows.tolist(), "parameters": {"method": "integrated_gradients",
                                                                              "steps": 16, "tolerance": 1.0}})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        server.terminate()
        server.wait(30)
    model = load_sample("cancer")
    assert sorted(answers) == list(range(8))
    for i, (status, body) in answers.items():
        assert status == 200, body
        want = get_method("integrated_gradients").explain(model, X[[i, i + 8]], steps=16, tolerance=1.0,
                                                          use_cache=False)
        np.testing.assert_allclose([e["values"] for e in body["explanations"]], want.values, atol=1e-6)
    assert len({body["run"] for _, body in answers.values()}) == 8
    ws.close()
