"""Attack A3 on `ModelFunction._session`'s embedding hook (text models held shared by two queue workers): it acts in
its own session's passes only, on whichever thread runs them, and leaves no hook behind on any path out."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from explain import InputSpec, LoadedModel
from explain.errors import Cancelled
from explain.output.engine import Engine
from explain.output.model_function import ModelFunction


class _Text(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc, self.boom = nn.Embedding(10, 4), nn.Linear(4, 2), False

    def forward(self, ids):  # [B, L] -> [B, 2]
        e = self.emb(ids)  # [B, L, 4]
        if self.boom:
            raise RuntimeError("boom mid-chunk")
        return self.fc(e.mean(1))


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(0)
    module = _Text().eval()
    model = LoadedModel(module=module, format="safetensors", sha256="t",
                        spec=InputSpec("text", (3,), dtype="int64", class_names=["a", "b"]))
    a, b = ModelFunction(model, torch.tensor([[1, 2, 3], [4, 5, 6]])), ModelFunction(model, torch.tensor([[7, 8, 9]]))
    pa, pb = a.start_points() * 2, b.start_points() * 3  # [2, 3, 4], [1, 3, 4]: not the inputs' own points
    oa, ob = torch.tensor([0, 1]), torch.tensor([0])
    with a.session() as la, torch.no_grad():
        alone_a = la(pa, oa)  # [2, 2]
    with b.session() as lb, torch.no_grad():
        alone_b = lb(pb, ob)  # [1, 2]
    return module, (a, pa, oa, alone_a), (b, pb, ob, alone_b)


def test_a_chunk_run_on_another_thread_is_still_its_sessions_pass(text):
    _, (a, pa, oa, alone_a), _ = text
    got = {}
    with a.session() as la, torch.no_grad():
        worker = threading.Thread(target=lambda: got.setdefault("x", la(pa, oa)))
        worker.start()
        worker.join()
    assert torch.equal(got["x"], alone_a)  # was the inputs' own logits: the hook kept to the opening thread


def test_nested_sessions_and_two_threads_each_as_alone(text):
    _, (a, pa, oa, alone_a), (b, pb, ob, alone_b) = text
    with torch.no_grad(), b.session() as lb, a.session() as la:
        assert torch.equal(la(pa, oa), alone_a) and torch.equal(lb(pb, ob), alone_b)
    got, barrier = {}, threading.Barrier(2)

    def job(name, fn, points, owner):
        with fn.session() as logits, torch.no_grad():
            barrier.wait()
            got[name] = [logits(points, owner) for _ in range(50)]

    threads = [threading.Thread(target=job, args=("a", a, pa, oa)), threading.Thread(target=job, args=("b", b, pb, ob))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(torch.equal(x, alone_a) for x in got["a"]) and all(torch.equal(x, alone_b) for x in got["b"])


def test_no_hook_is_left_after_a_failing_pass_or_a_cancel(text):
    module, (a, pa, oa, _), _ = text
    module.boom = True
    try:
        with pytest.raises(RuntimeError, match="boom"), a.session() as la:
            la(pa, oa)
    finally:
        module.boom = False
    assert not module.emb._forward_hooks

    def cancel(done, total):
        raise Cancelled("stopped by the user")

    make = lambda s, e: (pa[s:e], oa[s:e], torch.zeros(e - s, dtype=torch.long))  # noqa: E731
    with pytest.raises(Cancelled):
        Engine("cpu", batch_size=1, progress=cancel).gradients(a, 2, make, lambda *args: None)
    assert not module.emb._forward_hooks
