"""Attack A1 (stop 31) on the API's dynamic batching: ``:predict`` requests of one version ran as one engine batch
whoever sent them, each caller answered with its own rows. That holds only for a model whose row's answer
depends on that row alone. A user's graph (TorchScript, ``.pt2``, a Hugging Face model, a pickle) may compute
anything across the batch: ``x.mean(0)`` mixes every caller's rows into every answer, so an editor who
uploaded such a graph read the other callers' inputs out of its own predictions. Only a model Glassbox built
from its own code (weights in a registered architecture) now shares batches between callers; any other
is batched with its caller's own requests."""
from __future__ import annotations

import threading
import time

import numpy as np

from explain.model import LoadedModel
from explain.service import api as api_mod
from tests.test_api_load import OP, X, _concurrently, _hold_model, client, served  # noqa: F401 - fixtures

pytest_plugins = ["tests.workspace_db"]


def test_only_glassbox_built_models_share_batches_between_callers():
    from explain.workspace import Actor

    alice, bob = Actor("alice", token=True), Actor("bob", token=True)
    for fmt, shared in (("safetensors", True), ("state_dict", True), ("torchscript", False), ("export", False),
                        ("huggingface", False), ("pickle", False)):
        model = LoadedModel.__new__(LoadedModel)
        object.__setattr__(model, "format", fmt)
        object.__setattr__(model, "process", None)
        keys = {api_mod.predict_key(who, "m", 1, model) for who in (alice, bob)}
        assert (len(keys) == 1) is shared, fmt


def test_a_graph_that_mixes_rows_answers_each_caller_from_its_own_rows(client, monkeypatch):  # noqa: F811
    """A row-mixing model (every answer the batch's mean), seen as a user's graph: bob's request, sent while
    alice's batch is held and her next request waits, runs without her rows; his answer is his row's alone."""
    ws, app, test_client, h = client
    tokens = {who: {"Authorization": f"Bearer {ws.users.add_token(OP, f'{who}-{time.monotonic_ns()}', 'viewer')}"}
              for who in ("alice", "bob")}
    monkeypatch.setattr(api_mod, "SHARED_BATCH_FORMATS", ())  # the cancer sample taken for a user's graph
    release = threading.Event()
    started, calls = _hold_model(monkeypatch, release)
    real = LoadedModel.predict_proba

    def mixing(self, inputs):  # [n, K]: each row the batch's mean, as `x.mean(0)` in a graph would give
        out = real(self, inputs)
        return np.repeat(out.mean(0, keepdims=True), len(out), axis=0)

    monkeypatch.setattr(LoadedModel, "predict_proba", mixing)
    ask = {who: (lambda rows, who=who: test_client.post("/v1/models/cancer:predict", headers=tokens[who],
                                                         json={"instances": rows.tolist()}))
           for who in tokens}
    _, holder = _concurrently([lambda: ask["alice"](X[:1])])
    assert started.wait(60)
    answers, threads = _concurrently([lambda: ask["alice"](X[1:4]), lambda: ask["bob"](X[4:5])])
    deadline = time.monotonic() + 10
    while len(calls) < 1 and time.monotonic() < deadline:  # bob's ran at once, beside alice's held batch
        time.sleep(0.01)
    release.set()
    for t in [*holder, *threads]:
        t.join(60)
    assert all(a.status_code == 200 for a in answers.values()), [a.text for a in answers.values()]
    for rows, _ in calls:  # no engine batch held rows of both
        assert not (any((rows == X[4]).all(1)) and any((rows == X[1]).all(1)))
    bob = np.array(answers[1].json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(bob, _alone(X[4:5]), rtol=0, atol=1e-6)  # was the mean with alice's three rows


def _alone(rows: np.ndarray) -> np.ndarray:
    from sample_models import load_sample

    return load_sample("cancer").predict_proba(rows)
