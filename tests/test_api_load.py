"""The API under load (issue 23), the HTTP side: a request that does not fit its model is a 400 with
nothing queued, a wrong verb on an action route is a 405 with ``Allow``, and concurrent requests are
batched (`explain.service.batching`): one engine batch (one job for ``:explain``), each request
answered with exactly its rows of it, a request that breaks the model failing alone. On SQLite and
PostgreSQL. No timing assertions: a batch is made deterministic by holding its key busy."""
from __future__ import annotations

import asyncio
import threading
import time

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.service.api import create_app
from explain.service.batching import Batcher
from explain.service.worker import start_embedded, stop_embedded
from explain.workspace import Actor, open_workspace
from sample_models import load_sample, sample_inputs, sample_registry_files
from tests.workspace_db import BACKENDS, postgres_server

OP = Actor("cli:tester", operator=True)
X = sample_inputs("cancer")["inputs"]  # [N, 30] float32, 2 classes
IDS = sample_inputs("sentiment")["inputs"]  # [N, 16] int64 token ids


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    """One seeded workspace per backend for the module, an editor's and a viewer's token."""
    home = tmp_path_factory.mktemp(f"api-load-{request.param}")
    server = postgres_server() if request.param == "postgresql" else None
    url = server.create_database() if server else f"sqlite:///{home / 'glassbox.db'}"
    ws = open_workspace(url, home=home / "home")
    ws.seed(sample_registry_files())
    headers = {role: {"Authorization": f"Bearer {ws.users.add_token(OP, role, role)}"} for role in ("viewer", "editor")}
    yield ws, headers
    ws.close()
    if server:
        server.drop_database(url)


@pytest.fixture
def client(served):
    """No worker: a job that is queued stays queued. Batches wait up to 10 s for company (they never
    do here: each test holds its key busy, then lets it go)."""
    ws, headers = served
    app = create_app(ws, worker=False, max_jobs=100, delay_ms=10_000)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield ws, app, test_client, headers


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# -- validation before queueing ---------------------------------------------------------------------
@pytest.mark.parametrize("model, instances, parameters, words", [
    ("cancer", X[:2].tolist(), {"method": "saliency", "target": 2}, "out of range: the model has 2 classes (0..1)"),
    ("cancer", X[:2].tolist(), {"method": "saliency", "target": [0, -1]}, "out of range"),
    ("cancer", [[1.0, 2.0]], {"method": "saliency"}, "expects (30,)"),
    ("cancer", X[:1, :29].tolist(), {"method": "saliency"}, "expects (30,)"),
    ("sentiment", [[1.5] * 16], {"method": "saliency"}, "not whole; this model takes token ids"),
    ("cancer", X[:1].tolist(), {"method": "nope"}, "Unknown method 'nope'"),
    ("cancer", X[:1].tolist(), {"method": "grad_cam"}, "grad_cam"),  # a method that does not fit a tabular MLP
    ("cancer", X[:1].tolist(), {"method": "integrated_gradients", "steps": 0}, "steps"),
    ("cancer", X[:1].tolist(), {"method": "integrated_gradients", "steps": "many"}, "must be int"),
])
def test_a_request_that_does_not_fit_is_400_and_nothing_is_queued(client, model, instances, parameters, words):
    ws, _, test_client, h = client
    before = len(ws.jobs.list(OP))
    for route, body in ((f"/v1/models/{model}:explain", {"instances": instances, "parameters": parameters}),
                        ("/v1/jobs", {"model": model, "instances": instances, "parameters": parameters})):
        assert words in _one_line_error(test_client.post(route, headers=h["editor"], json=body), 400)
    assert len(ws.jobs.list(OP)) == before


def test_predict_checks_shape_and_dtype_before_running(client):
    _, _, test_client, h = client
    r = test_client.post("/v1/models/cancer:predict", headers=h["viewer"], json={"instances": [[1.0, 2.0]]})
    assert "expects (30,)" in _one_line_error(r, 400)
    r = test_client.post("/v1/models/sentiment:predict", headers=h["viewer"], json={"instances": [[0.5] * 16]})
    assert "not whole" in _one_line_error(r, 400)


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("action", ["predict", "explain"])
def test_a_wrong_verb_on_an_action_route_is_405_with_allow(client, verb, action):
    _, _, test_client, h = client
    r = test_client.request(verb, f"/v1/models/cancer:{action}", headers=h["editor"])
    assert _one_line_error(r, 405) == f"{verb} is not allowed on :{action}; use POST."
    assert r.headers["allow"] == "POST"


def test_an_unknown_action_is_404_and_other_routes_keep_their_allow(client):
    _, _, test_client, h = client
    r = test_client.post("/v1/models/cancer:train", headers=h["editor"], json={})
    assert _one_line_error(r, 404) == "No action 'train' on models; the actions are :predict, :explain, :generate."
    r = test_client.get("/v1/jobs", headers=h["editor"])
    assert _one_line_error(r, 405) and r.headers["allow"] == "POST"
    assert test_client.get("/v1/models/cancer@v1", headers=h["viewer"]).json()["ref"] == "cancer@v1"


# -- the batcher alone --------------------------------------------------------------------------------
def _held(batcher: Batcher, key, release: threading.Event) -> threading.Thread:
    """A request of ``key`` whose computation waits for ``release``: the key is busy until then."""
    started = threading.Event()

    def hold(rows):
        started.set()
        release.wait(30)
        return rows

    thread = threading.Thread(target=batcher.run, args=(key, np.zeros((1, 2)), hold))
    thread.start()
    assert started.wait(30)
    return thread


def _gather(batcher: Batcher, key, calls: list[tuple[np.ndarray, ...]], fn) -> tuple[dict, dict]:
    """Each call's ``batcher.run`` in its own thread, all joining while ``key`` is held busy."""
    release = threading.Event()
    holder = _held(batcher, key, release)
    results, errors = {}, {}

    def ask(i):
        try:
            results[i] = batcher.run(key, calls[i], fn)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            errors[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while batcher.waiting(key) < sum(len(c) for c in calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [holder, *threads]:
        t.join(30)
    return results, errors


def test_concurrent_calls_run_as_one_batch_each_getting_its_own_rows():
    batcher = Batcher(max_rows=64, max_delay_s=10)
    seen = []

    def double(rows):  # [n, 2] -> [n, 2]
        seen.append(len(rows))
        return rows * 2

    calls = [np.full((1 + i % 3, 2), float(i)) for i in range(8)]  # 15 rows in all
    results, errors = _gather(batcher, "k", calls, double)
    assert errors == {} and seen == [15]  # one call of the function for the 8 requests
    assert list(batcher.batches) == [(1, 1), (15, 8)]
    for i, rows in enumerate(calls):
        np.testing.assert_array_equal(results[i], rows * 2)


def test_a_batch_holds_at_most_max_rows():
    batcher = Batcher(max_rows=6, max_delay_s=10)
    calls = [np.full((3, 2), float(i)) for i in range(4)]  # 12 rows: two batches of 6
    results, errors = _gather(batcher, "k", calls, lambda rows: rows + 1)
    assert errors == {} and sorted(batcher.batches) == [(1, 1), (6, 2), (6, 2)]
    for i, rows in enumerate(calls):
        np.testing.assert_array_equal(results[i], rows + 1)


def test_a_call_that_breaks_the_batch_fails_alone():
    batcher = Batcher(max_rows=64, max_delay_s=10)

    def refuse_negative(rows):
        if (rows < 0).any():
            raise ValueError("a negative row")
        return rows * 3

    calls = [np.full((1, 2), -1.0 if i == 5 else float(i)) for i in range(8)]
    results, errors = _gather(batcher, "k", calls, refuse_negative)
    assert set(errors) == {5} and str(errors[5]) == "a negative row"
    for i in set(range(8)) - {5}:
        np.testing.assert_array_equal(results[i], calls[i] * 3)


def test_requests_that_come_while_their_key_is_busy_gather_past_the_delay():
    """A group whose key's batch runs keeps taking requests until that batch ends, its ``max_delay_s``
    passed or not: they would all wait for it anyway (as Triton batches what queued meanwhile)."""
    batcher = Batcher(max_rows=64, max_delay_s=0.02)
    release, results = threading.Event(), {}
    holder = _held(batcher, "k", release)
    threads = []
    for i in range(4):  # each one after the group's delay has passed
        threads.append(threading.Thread(target=lambda i=i: results.__setitem__(
            i, batcher.run("k", np.full((1, 2), float(i)), lambda rows: rows + 1))))
        threads[-1].start()
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while batcher.waiting("k") < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [holder, *threads]:
        t.join(30)
    assert list(batcher.batches) == [(1, 1), (4, 4)]
    for i in range(4):
        np.testing.assert_array_equal(results[i], np.full((1, 2), i + 1.0))


def test_a_lone_call_does_not_wait_for_the_delay():
    batcher = Batcher(max_rows=64, max_delay_s=60)  # a call that waited for company would take a minute
    done = []
    thread = threading.Thread(target=lambda: done.append(batcher.run("k", np.ones((2, 2)), lambda rows: rows * 7)))
    thread.start()
    thread.join(30)
    assert len(done) == 1 and list(batcher.batches) == [(2, 1)]
    np.testing.assert_array_equal(done[0], np.full((2, 2), 7.0))


def test_no_delay_means_no_batching():
    batcher = Batcher(max_rows=64, max_delay_s=0)
    np.testing.assert_array_equal(batcher.run("k", np.ones((2, 2)), lambda rows: rows * 5), np.full((2, 2), 5.0))
    assert list(batcher.batches) == []  # called directly


def test_event_loop_callers_wait_there_and_their_batch_runs_once_in_a_thread():
    """`Batcher.arun`: the requests wait in the event loop, ``fn`` runs once for them all in a worker
    thread; the request that leads the group cancelled (its client gone) stops nobody else's answer."""
    batcher = Batcher(max_rows=64, max_delay_s=10)
    release, seen = threading.Event(), []
    holder = _held(batcher, "k", release)  # a thread's `run` keeps the key busy: the others gather
    calls = [np.full((1 + i % 3, 2), float(i)) for i in range(8)]  # 15 rows in all

    def double(rows):  # [n, 2] -> [n, 2]
        seen.append((len(rows), threading.get_ident()))
        return rows * 2

    async def ask() -> tuple[list, int]:
        tasks = [asyncio.create_task(batcher.arun("k", rows, double)) for rows in calls]
        deadline = time.monotonic() + 30
        while batcher.waiting("k") < 15 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tasks[0].cancel()  # the leader's request
        release.set()  # the thread's batch ends: the loop's group runs
        return await asyncio.gather(*tasks, return_exceptions=True), threading.get_ident()

    answers, loop_thread = asyncio.run(ask())
    holder.join(30)
    assert isinstance(answers[0], asyncio.CancelledError)
    assert [n for n, _ in seen] == [15] and seen[0][1] != loop_thread  # one call, in a worker thread
    assert list(batcher.batches) == [(1, 1), (15, 8)]
    for i in range(1, 8):
        np.testing.assert_array_equal(answers[i], calls[i] * 2)


def test_an_event_loop_caller_alone_does_not_wait_for_the_delay_and_fails_alone():
    batcher = Batcher(max_rows=64, max_delay_s=60)  # a call that waited for company would take a minute

    def refuse_negative(rows):
        if (rows < 0).any():
            raise ValueError("a negative row")
        return rows * 7

    async def ask():
        alone = await batcher.arun("k", np.ones((2, 2)), refuse_negative)
        with pytest.raises(ValueError, match="a negative row"):
            await batcher.arun("k", -np.ones((1, 2)), refuse_negative)
        return alone

    np.testing.assert_array_equal(asyncio.run(asyncio.wait_for(ask(), 30)), np.full((2, 2), 7.0))
    assert list(batcher.batches) == [(2, 1), (1, 1)]


# -- batching through the API --------------------------------------------------------------------------
def _hold_model(monkeypatch, release: threading.Event) -> tuple[threading.Event, list]:
    """`LoadedModel.predict_proba` whose first call waits for ``release``; every call's (rows, probs) kept."""
    real, started, calls = LoadedModel.predict_proba, threading.Event(), []

    def predict_proba(self, inputs):
        if not started.is_set():
            started.set()
            release.wait(30)
        try:
            out = real(self, inputs)
        except Exception as exc:
            calls.append((np.array(inputs), exc))
            raise
        calls.append((np.array(inputs), out))
        return out

    monkeypatch.setattr(LoadedModel, "predict_proba", predict_proba)
    return started, calls


def _concurrently(asks: list) -> dict:
    answers = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, asks[i]())) for i in range(len(asks))]
    for t in threads:
        t.start()
    return answers, threads


@pytest.mark.parametrize("name, rows, bad", [("cancer", X[:8], None), ("sentiment", IDS[:8], 3)])
def test_concurrent_predicts_are_one_engine_batch_each_answered_with_its_rows(client, monkeypatch, name, rows, bad):
    ws, app, test_client, h = client
    rows = rows.copy()
    if bad is not None:
        rows[bad, 0] = 10**6  # a token id past the vocabulary: the model raises on it
    release = threading.Event()
    started, calls = _hold_model(monkeypatch, release)
    first, holder = _concurrently([lambda: test_client.post(f"/v1/models/{name}:predict", headers=h["viewer"],
                                                            json={"instances": rows[:1].tolist()})])
    assert started.wait(60)
    answers, threads = _concurrently([
        lambda i=i: test_client.post(f"/v1/models/{name}:predict", headers=h["viewer"],
                                     json={"instances": rows[i].tolist()}) for i in range(len(rows))])
    key = ("predict", name, 1)
    joined = len(rows) - (bad is not None)  # an id past the vocabulary is refused before it joins a batch
    deadline = time.monotonic() + 60
    while app.state.batcher.waiting(key) < joined and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [*holder, *threads]:
        t.join(60)
    engine = list(calls)
    assert len(engine[1][0]) == joined and len(engine) == 2  # after the held one, the others: one engine batch
    alone = load_sample(name)
    for i in range(len(rows)):
        if i == bad:
            assert "0..59" in _one_line_error(answers[i], 400)  # refused alone, before any batch
            continue
        assert answers[i].status_code == 200, answers[i].text
        got = np.array(answers[i].json()["predictions"], dtype=np.float32)  # [1, K]
        batch_rows, batch_probs = engine[1]
        (j,) = np.flatnonzero((batch_rows == rows[i]).all(axis=1))
        np.testing.assert_array_equal(got, batch_probs[j:j + 1])  # exactly its rows of what the engine gave
        np.testing.assert_allclose(got, alone.predict_proba(rows[i:i + 1]), rtol=0, atol=1e-6)


def test_concurrent_one_row_explains_are_one_job_each_answered_with_its_row(client):
    """They wait in the event loop (`Batcher.arun`); their values are those of the same requests sent one
    at a time."""
    ws, app, test_client, h = client
    parameters = {"method": "integrated_gradients", "steps": 16, "tolerance": 1.0, "target": 1}
    jobs_before = len(ws.jobs.list(OP))

    def ask(i):
        return lambda: test_client.post("/v1/models/cancer:explain", headers=h["editor"],
                                        json={"instances": X[i].tolist(), "parameters": parameters})

    first, holder = _concurrently([ask(10)])  # its job waits: there is no worker yet
    deadline = time.monotonic() + 60
    while len(ws.jobs.list(OP)) == jobs_before and time.monotonic() < deadline:
        time.sleep(0.01)
    answers, threads = _concurrently([ask(i) for i in range(4)])
    while app.state.batcher.waiting() < 4 and time.monotonic() < deadline:
        time.sleep(0.01)

    async def threads_busy() -> int:
        return anyio.to_thread.current_default_thread_limiter().borrowed_tokens

    # waiting in the event loop: a thread for the held batch and one for the four's leader, none a request
    assert test_client.portal.call(threads_busy) == 2
    start_embedded(ws)
    try:
        for t in [*holder, *threads]:
            t.join(120)
        batches = list(app.state.batcher.batches)  # (rows, requests): the held request, then the four together
        sequential = [ask(i)() for i in range(4)]  # the same requests one at a time: a job each
    finally:
        stop_embedded(ws)
    assert batches == [(1, 1), (4, 4)]
    assert len(ws.jobs.list(OP)) == jobs_before + 2 + 4  # the first request's job, one for the four, one each
    bodies = [answers[i].json() for i in range(4)]
    assert all(answers[i].status_code == 200 for i in range(4)), bodies
    assert len({b["run"] for b in bodies}) == 1 and sorted(b["run_rows"][0] for b in bodies) == [0, 1, 2, 3]
    run = ws.runs.open(OP, bodies[0]["run"])
    method = get_method("integrated_gradients")
    for i, body in enumerate(bodies):
        (row,) = body["run_rows"]
        np.testing.assert_array_equal(run.inputs["inputs"][row], X[i])  # its instance is that row of the run
        got = np.array(body["explanations"][0]["values"], dtype=np.float32)
        np.testing.assert_array_equal(got, run.results["0/values"][row])
        assert body["explanations"][0]["target"] == 1
        want = method.explain(load_sample("cancer"), X[i:i + 1], target=1, steps=16, tolerance=1.0, use_cache=False)
        np.testing.assert_allclose(got, want.values[0], rtol=0, atol=1e-6)
        alone = sequential[i].json()
        assert sequential[i].status_code == 200 and alone["run"] != body["run"] and alone["run_rows"] == [0]
        np.testing.assert_allclose(got, alone["explanations"][0]["values"], rtol=0, atol=1e-6)
    assert first[0].status_code == 200 and first[0].json()["run_rows"] == [0]


def test_a_batch_that_times_out_is_not_asked_again_row_by_row(served):
    ws, headers = served
    app = create_app(ws, worker=False, max_jobs=100, delay_ms=10_000, explain_timeout_s=2)  # no worker: 504s
    body = {"parameters": {"method": "saliency", "target": 0}}
    with TestClient(app, raise_server_exceptions=False) as test_client:
        jobs_before = len(ws.jobs.list(OP))

        def ask(i):
            return lambda: test_client.post("/v1/models/cancer:explain", headers=headers["editor"],
                                            json={**body, "instances": X[i].tolist()})

        first, holder = _concurrently([ask(20)])
        deadline = time.monotonic() + 60
        while len(ws.jobs.list(OP)) == jobs_before and time.monotonic() < deadline:
            time.sleep(0.01)
        answers, threads = _concurrently([ask(i) for i in range(3)])
        for t in [*holder, *threads]:
            t.join(60)
    for answer in [first[0], *answers.values()]:
        assert "did not finish in 2 s" in _one_line_error(answer, 504)
    runs = list(app.state.batcher.batches)  # (rows, requests) of each batch: one job each, none run again
    assert sum(requests for _, requests in runs) == 4 and max(requests for _, requests in runs) == 3
    assert len(ws.jobs.list(OP)) - jobs_before == len(runs) == 2


def test_predict_goes_past_fastapis_routing_and_answers_as_it_did(client, monkeypatch):
    """`ActionRoutes`: ``POST NAME:predict`` reaches its endpoint without FastAPI's dependency solving; its
    errors are the app's own handlers' one lines; other verbs and paths still go through FastAPI."""
    import fastapi.routing

    ws, _, test_client, h = client
    real, solved = fastapi.routing.solve_dependencies, []
    monkeypatch.setattr(fastapi.routing, "solve_dependencies", lambda *a, **k: solved.append(1) or real(*a, **k))
    r = test_client.post("/v1/models/cancer:predict", headers=h["viewer"], json={"instances": X[:2].tolist()})
    assert r.status_code == 200 and np.asarray(r.json()["predictions"]).shape == (2, 2) and solved == []
    post = lambda path, **kw: test_client.post(path, headers=h["viewer"], **kw)  # noqa: E731
    assert "not JSON" in _one_line_error(post("/v1/models/cancer:predict", content=b"{"), 422)  # pydantic's
    assert "instances: Field required" in _one_line_error(post("/v1/models/cancer:predict", json={}), 422)
    assert "No model 'nope'" in _one_line_error(post("/v1/models/nope:predict", json={"instances": [[1]]}), 404)
    assert "expects (30,)" in _one_line_error(post("/v1/models/cancer:predict", json={"instances": [[1.0]]}), 400)
    assert solved == []
    assert post("/v1/models/a/b:predict", json={}).status_code == 404  # not one path segment: FastAPI's 404
    assert _one_line_error(test_client.get("/v1/models/cancer:predict", headers=h["viewer"]), 405)
    assert test_client.get("/v1/models/cancer", headers=h["viewer"]).status_code == 200 and solved


def test_predict_reads_a_versions_file_once_not_on_every_request(client, monkeypatch):
    ws, _, test_client, h = client
    real, reads = ws.registry.file, []
    monkeypatch.setattr(ws.registry, "file", lambda *a, **k: reads.append(a[1:]) or real(*a, **k))
    for i in range(5):
        r = test_client.post("/v1/models/shapes@v1:predict", headers=h["viewer"],
                             json={"instances": sample_inputs("shapes")["inputs"][i].tolist()})
        assert r.status_code == 200, r.text
    assert reads == [("shapes", 1)]  # then found by the version's file and spec, in the API's own store
    r = test_client.post("/v1/models/shapes@v1:predict", headers={"Authorization": "Bearer gbx_nope"},
                         json={"instances": sample_inputs("shapes")["inputs"][0].tolist()})
    assert r.status_code == 401  # the cached model is no way around the token and role checks


# -- the per-request lookups (`explain.service.lookups`): remembered while the workspace is unchanged --
def test_token_and_version_are_looked_up_once_while_the_workspace_is_unchanged(client):
    ws, app, test_client, h = client
    body = {"instances": X[:1].tolist()}
    assert test_client.post("/v1/models/cancer@v1:predict", headers=h["viewer"], json=body).status_code == 200
    misses = app.state.lookups.misses
    for _ in range(5):
        assert test_client.post("/v1/models/cancer@v1:predict", headers=h["viewer"], json=body).status_code == 200
    assert app.state.lookups.misses == misses  # no token, role or version query: the stamp alone


def test_a_revoked_token_is_refused_at_once_and_an_alias_move_seen_at_once(client, served):
    """Written by another process (a second handle on the same database, as the CLI's would be)."""
    ws, app, test_client, h = client
    other = open_workspace(ws.core.db.engine.url.render_as_string(hide_password=False), home=ws.home)
    try:
        v1, v2 = (other.registry.register(OP, f"moving_{ws.core.db.engine.dialect.name}", data, filename)
                  for data, filename in (sample_registry_files()["cancer"], sample_registry_files()["shapes"]))
        other.registry.set_alias(OP, v1.name, "prod", 1)
        token = other.users.add_token(OP, f"short_lived_{v1.name}", "viewer")
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(2):  # the second time from what the lookups remember
            r = test_client.get(f"/v1/models/{v1.name}@prod", headers=auth)
            assert (r.status_code, r.json()["version"]) == (200, 1)
        other.registry.set_alias(OP, v1.name, "prod", 2)
        assert test_client.get(f"/v1/models/{v1.name}@prod", headers=auth).json()["version"] == 2
        other.users.remove_token(OP, f"short_lived_{v1.name}")
        assert "Unknown token" in _one_line_error(test_client.get(f"/v1/models/{v1.name}@prod", headers=auth), 401)
        assert test_client.get(f"/v1/models/{v1.name}@prod", headers=h["viewer"]).json()["version"] == 2
    finally:
        other.close()


def test_a_late_commit_of_an_older_audit_id_changes_the_stamp(served):
    """PostgreSQL hands out ids before commit: a write that took a smaller id may commit after a
    larger one. The stamp is the newest ids, so such a commit changes it all the same."""
    from sqlalchemy import insert, text

    from explain.service.lookups import Lookups
    from explain.workspace.schema import AuditEntry

    ws, _ = served
    lookups = Lookups(ws)
    newest = lookups.stamp()[0][0]  # (id, at) of the newest audit row
    row = {"actor": "t", "action": "test", "object_type": "t", "object_id": "t"}
    with ws.core.db.transaction() as s:
        s.execute(insert(AuditEntry).values(id=newest + 10, **row))
    before = lookups.stamp()
    with ws.core.db.transaction() as s:  # committed later, with an id below the newest
        s.execute(insert(AuditEntry).values(id=newest + 5, **row))
    after = lookups.stamp()
    if ws.core.db.engine.dialect.name == "postgresql":  # the sequence past the ids given here, for later writes
        with ws.core.db.transaction() as s:
            s.execute(text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), (SELECT max(id) FROM audit_log))"))
    assert after[0][0] == before[0][0] == newest + 10 and after != before


def test_the_stamp_is_read_on_a_connection_of_its_own_that_recovers_and_closes_with_the_engine(served):
    """`Lookups.stamp` reads through a driver connection held apart from the pool (no pool slot taken
    between requests); a write by another handle shows in the next read; a broken connection is
    replaced within the same read; the engine's dispose (`Workspace.close`) closes it."""
    from explain.service.lookups import Lookups

    ws, _ = served
    engine = ws.core.db.engine
    lookups = Lookups(ws)
    before = lookups.stamp()
    assert engine.pool.checkedout() == 0 and lookups._stamper._held is not None
    other = open_workspace(engine.url.render_as_string(hide_password=False), home=ws.home)
    try:
        other.users.add_token(OP, f"stamp_{engine.dialect.name}", "viewer")
    finally:
        other.close()
    after = lookups.stamp()
    assert after != before and after[0][0] > before[0][0]  # the other handle's audit row, read at once
    lookups._stamper._held.dbapi_connection.close()  # as a server restart or a dropped socket leaves it
    assert lookups.stamp() == after
    engine.dispose()
    assert lookups._stamper._held is None
    assert lookups.stamp() == after  # a new one on the next read


def test_sqlite_reads_the_stamp_in_the_event_loop_and_a_read_that_would_wait_goes_to_a_thread(served, monkeypatch):
    """SQLite: `identity_soon` reads the stamp in the loop (no thread read); a read that would wait for a
    lock (`StampBusy`) is read in a thread instead, with the same answer. PostgreSQL: always a thread."""
    from explain.service.lookups import Lookups, StampBusy

    ws, headers = served
    token = headers["viewer"]["Authorization"].split()[1]
    lookups = Lookups(ws)
    threaded = []
    real = lookups._stamps._read
    monkeypatch.setattr(lookups._stamps, "_read", lambda: threaded.append(1) or real())
    found = asyncio.run(lookups.identity_soon(token))
    assert (found.name, found.role, found.stamp) == ("viewer", "viewer", lookups.stamp())
    sqlite = ws.core.db.engine.dialect.name == "sqlite"
    assert threaded == ([] if sqlite else [1])
    if sqlite:
        def busy():
            raise StampBusy()

        monkeypatch.setattr(lookups._loop_stamper, "read", busy)
        again = asyncio.run(lookups.identity_soon(token))
        assert again == found and threaded == [1]


def test_a_shared_read_answers_each_caller_with_a_read_begun_after_it_asked():
    """`SharedRead` (the Gate's stamp reads): callers asking together share one read; one asking while
    that read runs gets the next read's value, never the older one."""
    from explain.service.lookups import SharedRead

    reads, release = [], threading.Event()

    def read() -> int:
        reads.append(len(reads) + 1)
        if len(reads) == 1:
            release.wait(30)  # the first read is slow: a caller asks meanwhile
        return len(reads)

    shared = SharedRead(read)

    async def ask():
        first = [asyncio.create_task(shared()) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not reads and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        late = asyncio.create_task(shared())  # asked after the first read began
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*first), await late

    assert asyncio.run(asyncio.wait_for(ask(), 30)) == ([1, 1, 1], 2) and reads == [1, 2]


def test_a_shared_read_serves_each_event_loop_apart():
    """A test client without ``with`` runs each request in an event loop of its own, in its own thread:
    a loop's caller never waits on a read another loop runs."""
    from explain.service.lookups import SharedRead

    reads, release = [], threading.Event()

    def read() -> int:
        reads.append(1)
        if len(reads) == 1:
            release.wait(30)  # the first loop's read is held while the second loop asks
        return len(reads)

    shared, answers = SharedRead(read), {}
    first = threading.Thread(target=lambda: answers.__setitem__("first", asyncio.run(shared())))
    first.start()
    deadline = time.monotonic() + 30
    while not reads and time.monotonic() < deadline:
        time.sleep(0.01)
    answers["second"] = asyncio.run(asyncio.wait_for(shared(), 30))  # not behind the first loop's read
    release.set()
    first.join(30)
    assert answers == {"first": 2, "second": 2} and len(reads) == 2
