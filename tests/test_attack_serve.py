"""Red-team checks of ``serve --processes N`` (`explain.cli.serve`): its port is shared through SO_REUSEPORT,
which the kernel grants any process of the same user that set it. A process already listening there that
way (an older serve, anything of this account) was silently joined and given a share of the connections,
with their bearer tokens; the first process now binds the port alone first. (Another user's process is
refused by the kernel itself.) ``--port 0`` sent the others to ports of their own, and a child whose first
process ended before it asked for PR_SET_PDEATHSIG served on alone."""
from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from explain.cli import serve

ROOT = Path(__file__).resolve().parent.parent


def _squatter() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_a_port_held_with_so_reuseport_by_another_process_is_refused():
    with _squatter() as other:
        port = other.getsockname()[1]
        with pytest.raises(OSError) as caught:
            serve._listen("127.0.0.1", port, reuse_port=True)
        assert caught.value.errno == errno.EADDRINUSE


def test_the_others_still_join_the_first_process_port():
    first = serve._listen("127.0.0.1", 0, reuse_port=True)
    try:
        port = first.getsockname()[1]
        with serve._listen("127.0.0.1", port, reuse_port=True, first=False) as other:
            assert other.getsockname()[1] == port
        with pytest.raises(OSError):  # a second serve of this user on the same port
            serve._listen("127.0.0.1", port, reuse_port=True)
    finally:
        first.close()


def test_the_others_are_started_on_the_port_the_first_listens_on(monkeypatch):
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: started.append((argv, kw)))
    args = argparse.Namespace(host="127.0.0.1", port=0, http="auto", loop="auto", max_batch_rows=None,
                              max_delay_ms=None, processes=3)
    serve._others(args, 43117)
    assert len(started) == 2 and all(a[a.index("--port") + 1] == "43117" and "--reuse-port" in a for a, _ in started)
    # no preexec_fn (the first forks with worker threads running): each asks for its SIGTERM itself
    assert all("preexec_fn" not in kw and kw["env"][serve.PARENT_ENV] == str(os.getpid()) for _, kw in started)


@pytest.mark.parametrize("parent_alive", [True, False])
def test_one_of_the_others_whose_first_already_ended_ends_at_once(parent_alive):
    """PR_SET_PDEATHSIG only fires for a parent that dies after it is asked: a child whose first process
    ended before that would have served on, alone. It compares its parent with the first's pid."""
    parent = os.getpid() if parent_alive else 1  # 1: not this child's parent
    code = f"from explain.cli.serve import _die_with_parent; _die_with_parent({parent}); print('serving')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == ("serving" if parent_alive else "")
