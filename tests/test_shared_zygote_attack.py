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


#: prints what a sandboxed child forked from the shared zygote runs with: its zygote, nice value, stack limit
INHERITS = """
import json, os, resource, sys, tempfile
sys.path.insert(0, sys.argv[1])
tempfile.tempdir = sys.argv[2]
from explain.loading import sandbox_zygote
from explain.loading.sandbox import run_in_sandbox
sandbox_zygote.share_zygotes(30)
run = run_in_sandbox('import os, resource\\nreport(phase="ready", protections=lock_down())\\n'
                     'report(ok=True, ppid=os.getppid(), nice=os.nice(0), stack=resource.getrlimit(resource.RLIMIT_STACK))\\n',
                     b"", preload="import json  # inherits")
print(json.dumps(run.final))
"""


def test_a_call_with_other_limits_does_not_fork_from_a_zygote_started_with_an_earlier_calls():
    """A forked child keeps its zygote's resource limits, nice value and cgroups (memory limits), which are
    those of the call that started it: a later call run with others (``nice``, ``ulimit -s``, another
    cgroup) gets a zygote of its own, so its model processes run with its settings."""
    import json
    import resource
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    folder = tempfile.mkdtemp(prefix="gbi", dir="/tmp")
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    small = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)

    def call(preexec=None) -> dict:
        proc = subprocess.run([sys.executable, "-c", INHERITS, str(root), folder], capture_output=True, text=True,
                              timeout=120, preexec_fn=preexec)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def niced_and_small_stack():
        os.nice(5)
        resource.setrlimit(resource.RLIMIT_STACK, (small, hard))

    try:
        first, second = call(), call(niced_and_small_stack)
        assert first["ok"] and second["ok"]
        assert (second["nice"], second["stack"][0]) == (first["nice"] + 5, small), (first, second)
        assert second["ppid"] != first["ppid"]
    finally:
        for sock in Path(folder).glob("glassbox-zygotes-*/*.sock"):
            sock.unlink()  # their zygotes end within a second
        shutil.rmtree(folder, ignore_errors=True)
