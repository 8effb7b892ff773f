"""Attacks on the shared zygote's peer checks (`explain.loading.zygote_identity`).

The zygote forks, for every admitted caller, a child that runs the code that caller sends before it
locks itself down: a sandboxed process admitted is out of its sandbox. The zygote admitted a caller by
the pid ``SO_PEERCRED`` names and ``/proc/PID``; a sandboxed caller that connected and ended (its
connection kept by a child of its own) leaves that pid to the next process given it, and an
unsandboxed one of this user there was admitted in its place. The caller's side already checked its
peer through a pidfd (``SO_PEERPIDFD``, Linux 6.5+); the zygote's side now does too (`admitted`).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from explain.loading import zygote_identity
from explain.loading.zygote_identity import SO_PEERPIDFD, admitted

#: connects to argv[1] with no_new_privs, as a sandboxed child would, and stays
SANDBOXED_CALLER = r'''
import ctypes, socket, sys, time
assert ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
print("connected", flush=True)
time.sleep(60)
'''


@pytest.fixture
def listener():
    folder = tempfile.mkdtemp(prefix="gbza", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = os.path.join(folder, "z.sock")
    sock.bind(path)
    sock.listen(4)
    yield sock, path
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_caller_whose_pid_names_another_process_by_now_is_not_admitted(listener, monkeypatch):
    server, path = listener
    if zygote_identity.unsandboxed(os.getpid()) is False:
        pytest.skip("this test process runs sandboxed itself")
    caller = subprocess.Popen([sys.executable, "-c", SANDBOXED_CALLER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        with conn:
            try:
                conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
            except OSError as exc:
                if exc.errno == errno.ENOPROTOOPT:
                    pytest.skip("a kernel before 6.5: no pidfd of a peer, the pid alone")
                raise
            assert not admitted(conn)  # no_new_privs: a sandboxed caller
            # the caller's pid given to an unsandboxed process of this user (here: this test's own)
            monkeypatch.setattr(zygote_identity, "peer", lambda sock: (os.getpid(), os.geteuid()))
            assert not admitted(conn)
    finally:
        caller.kill()
        caller.wait()
    monkeypatch.undo()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mine:  # an unsandboxed caller: admitted
        mine.connect(path)
        conn, _ = server.accept()
        with conn:
            assert admitted(conn)
