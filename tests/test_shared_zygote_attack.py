"""Attacks on the sandbox a model process forks into (issue 21's shared zygote relies on it).

`explain.loading.sandbox_zygote.SharedZygote` admits a caller that has no ``no_new_privs`` in the
zygote's own network namespace, trusting that every thread of a sandboxed child runs locked. A thread
started before ``lock_down`` (the intra-op pool) kept neither ``no_new_privs`` nor Landlock nor the new
network namespace: a graph's op running on it (the pool runs the model's parallel ops) was outside
the sandbox, and an ``execve`` from it would have been a process the shared zygote forks for.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from explain.loading.loader import load_model
from tests.crafted_models import TABULAR, Gated, scripted


def _thread_states(pid: int) -> dict[str, tuple[str, str]]:
    states = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        states[tid] = (fields["NoNewPrivs"].strip(), os.readlink(f"/proc/{pid}/task/{tid}/ns/net"))
    return states


def test_every_thread_of_a_model_process_runs_under_its_lock(monkeypatch):
    """The pool's threads (two here) start after the lock: no_new_privs and the child's own network namespace."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the process asks for a pool of two
    torch.manual_seed(0)
    model = load_model(scripted(Gated()), TABULAR)
    model.predict_logits(np.ones((64, 4), np.float32))
    pid = model.process._channel.pid
    states = _thread_states(pid)
    main = states[str(pid)]
    if main[0] != "1" or "net-namespace" not in model.process.protections:
        pytest.skip(f"this kernel locks no child: {model.process.protections}")
    assert len(states) > 1, states  # a pool exists
    assert all(state == main for state in states.values()), states

