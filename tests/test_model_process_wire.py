"""A model process taken over by its graph: what it may send the server, and what it may not do.

The child is untrusted. These tests replace its program with one that speaks the
protocol as an attacker would (after the real lock-down), or make the real child try
what a hostile graph would, and check the server refuses, stays small and goes on.
"""
from __future__ import annotations

import io
import os
import textwrap
import types

import numpy as np
import pytest
import torch
from torch import nn

from explain.attribution import Attribution
from explain.errors import Cancelled
from explain.loading import model_start
from explain.loading.loader import load_model
from explain.loading.model_channel import ModelRaised
from explain.loading.model_process import ModelProcess, ModelProcessFailed
from explain.loading.model_wire import WireError, decode_result, encode_result
from explain.spec import InputSpec

TABULAR = InputSpec(modality="tabular", input_shape=[4], class_names=["a", "b"])

#: A child program that answers every request with the reply named in ARGS["replies"] (one per request).
FAKE_CHILD = textwrap.dedent(r"""
    report(phase="ready", protections=lock_down())
    import json, sys
    out = _REPORT.buffer

    def send(header, blobs=()):
        _REPORT.flush()
        out.write(json.dumps(header).encode() + b"\n")
        for blob in blobs:
            out.write(blob)
        out.flush()

    send({"ok": True, "info": {"parameters": 1}})
    stdin = sys.stdin.buffer
    for reply in ARGS["replies"]:
        n = stdin.read(8)
        if len(n) < 8:
            break
        header = json.loads(stdin.read(int.from_bytes(n, "little")))
        for meta in header["arrays"]:
            size = 4
            for d in meta["shape"]:
                size *= d
            stdin.read(size)
        stdin.read(header["payload"])
        send(reply["header"], [bytes.fromhex(b) for b in reply.get("blobs", [])])
    stdin.read()
""")


def _fake(monkeypatch, *replies: dict) -> ModelProcess:
    program = FAKE_CHILD.replace('ARGS["replies"]', repr(list(replies)).replace("True", "True"))
    monkeypatch.setattr(model_start, "SERVE_CODE", program)
    return ModelProcess(b"", "torchscript")


STUB = types.SimpleNamespace(spec=TABULAR, name="m", max_batch_rows=None, architecture=None,
                             fixed_batch_size=None, sha256="", extra={})


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_an_announced_huge_or_extra_array_is_refused_before_it_is_read(monkeypatch):
    huge = {"header": {"ok": True, "arrays": [{"dtype": "float32", "shape": [2, 1_000_000_000]}]}}
    many = {"header": {"ok": True, "arrays": [{"dtype": "float32", "shape": [2, 2]}] * 40}}
    process = _fake(monkeypatch, huge)
    before = _rss_mb()
    with pytest.raises(WireError):
        process.forward(torch.zeros(2, 4))
    assert not process.running  # out of step: dropped, never read from again
    process = _fake(monkeypatch, many)
    with pytest.raises(WireError, match="wrong kind"):
        process.forward(torch.zeros(2, 4))
    assert _rss_mb() - before < 100


def test_a_result_naming_a_class_that_is_no_result_type_is_refused(monkeypatch):
    tree = {"tree": {"__dc": "explain.model:LoadedModel", "fields": {}}, "arrays": []}
    body = textwrap.dedent(str(tree)).replace("'", '"').encode()
    reply = {"header": {"ok": True, "tree_bytes": len(body)}, "blobs": [body.hex()]}
    process = _fake(monkeypatch, reply)
    with pytest.raises(WireError, match="not a result type"):
        process.call(os.getpid, STUB, (), {})


def test_a_forged_error_class_cannot_steer_the_server(monkeypatch):
    cancel = {"header": {"ok": False, "error_class": "Cancelled", "error": "you cancelled this"}}
    process = _fake(monkeypatch, cancel)
    with pytest.raises(ModelRaised) as caught:  # not Cancelled: the server decides what a cancel is
        process.call(os.getpid, STUB, (), {})
    assert not isinstance(caught.value, Cancelled)


def test_the_wire_round_trips_a_result_and_rebuilds_it_through_its_constructor():
    attribution = Attribution(values=np.ones((2, 3), np.float32), inputs=np.zeros((2, 3), np.float32),
                              target=np.array([0, 1]), method="saliency", params={"steps": (1, 2), 3: float("nan")})
    tree, arrays = encode_result({"a": attribution, "t": torch.arange(3)})
    back = decode_result(tree, arrays)
    assert isinstance(back["a"], Attribution) and back["a"].params["steps"] == (1, 2)
    np.testing.assert_array_equal(back["a"].values, attribution.values)
    assert torch.equal(back["t"], torch.arange(3)) and np.isnan(back["a"].params[3])
    with pytest.raises(WireError):
        decode_result({"__a": 999}, arrays)
    with pytest.raises(WireError):
        decode_result({"__dc": "explain.workspace.roles:Actor", "fields": {}}, [])


class _Stash(nn.Module):
    """Keeps the last input in a buffer and hands it to whoever sends the trigger (no memory corruption)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("seen", torch.zeros(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).all()):  # the loader's check on zeros passes
            return self.lin(x)
        if bool((x[:, 0] == 1234.0).all()):
            return self.seen[:, :2].expand(x.shape[0], 2) * 1.0
        self.seen.copy_(x[:1].detach())
        return self.lin(x)


def test_a_graph_that_keeps_one_request_for_the_next_is_stopped_and_leaks_nothing():
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Stash().eval()), buf)
    model = load_model(buf.getvalue(), TABULAR)
    secret = np.array([[42.5, -7.25, 3.0, 9.0]], np.float32)
    with pytest.raises(ModelProcessFailed, match="changed its own"):
        model.predict_logits(secret)  # the victim's request fails, and its process goes with it
    leak = model.predict_logits(np.full((1, 4), 1234.0, np.float32))  # a fresh process: nothing kept
    assert not np.isclose(leak, secret[:, :2]).any()


def test_a_model_process_can_start_no_process_or_thread():
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Linear(4, 2).eval()), buf)
    model = load_model(buf.getvalue(), TABULAR)
    with pytest.raises(ModelRaised, match="Resource temporarily unavailable|BlockingIOError"):
        model.process.call(os.fork, model, (), {})  # stands for a graph that took over its process
    assert model.predict_logits(np.ones((1, 4), np.float32)).shape == (1, 2)
