"""The HTTP API's gate (`explain.service.asgi.Gate`): the token is checked before a byte of the body is
read, and the bytes held across all requests in flight are capped (``GLASSBOX_API_MAX_BUFFERED_MB``).
In-process through the ASGI interface (is the body ever read?), then a real ``python -m explain serve``
on 127.0.0.1: 100 concurrent chunked bodies without a valid token, and the global cap with one."""
from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from explain.service.api import create_app
from explain.workspace import Actor, open_workspace
from sample_models import sample_registry_files

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


@pytest.fixture
def ws(tmp_path):
    ws = open_workspace(f"sqlite:///{tmp_path / 'glassbox.db'}", home=tmp_path / "home")
    ws.seed(sample_registry_files())
    yield ws
    ws.close()


def _call(app, method: str, path: str, headers: dict[str, str], body_chunks: list[bytes]) -> tuple[int, dict, int]:
    """One request straight through the ASGI interface: (status, JSON body, body messages the app asked for)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asked, out = [0], {"status": None, "body": b""}

    async def receive():
        asked[0] += 1
        if asked[0] <= len(body_chunks):
            return {"type": "http.request", "body": body_chunks[asked[0] - 1],
                    "more_body": asked[0] < len(body_chunks)}
        return {"type": "http.disconnect"}  # the client says nothing more

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], json.loads(out["body"]), asked[0]


def test_no_token_or_a_wrong_one_is_refused_before_the_body_is_read(ws):
    app = create_app(ws, worker=False)
    body = [b'{"instances": [', b"[0.5]" * 1000, b"]}"]
    for headers, words in (({}, "Missing token"), ({"Authorization": "Bearer gbx_wrong"}, "Unknown token"),
                           ({"Authorization": "Basic abc"}, "Missing token")):
        status, answer, asked = _call(app, "POST", "/v1/models/cancer:predict", headers, body)
        assert (status, asked) == (401, 0), answer  # not one body message taken
        assert words in answer["error"]
    token = ws.users.add_token(OP, "viewer", "viewer")
    instances = json.dumps({"instances": [[0.5] * 30]}).encode()
    status, answer, asked = _call(app, "POST", "/v1/models/cancer:predict",
                                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                  [instances[:10], instances[10:]])
    assert status == 200 and asked == 2 and len(answer["predictions"]) == 1, answer
    status, answer, asked = _call(app, "GET", "/openapi.json", {}, [])  # the docs need no token
    assert status == 200 and "/v1/models" in answer["paths"]


def test_a_declared_body_that_does_not_fit_the_global_budget_is_503_unread(ws):
    app = create_app(ws, worker=False, max_body=4096, max_buffered=10_000)
    auth = {"Authorization": f"Bearer {ws.users.add_token(OP, 'viewer', 'viewer')}"}
    status, answer, asked = _call(app, "POST", "/v1/models/cancer:predict", {**auth, "Content-Length": "5000"}, [b"x"])
    assert (status, asked) == (413, 0) and "over 4096 bytes" in answer["error"]
    gate = app.middleware_stack  # built by the first call
    while type(gate).__name__ != "Gate":
        gate = gate.app
    gate.budget.used = 8000  # as if other requests in flight held 8000 bytes
    status, answer, asked = _call(app, "POST", "/v1/models/cancer:predict", {**auth, "Content-Length": "3000"}, [b"x"])
    assert (status, asked) == (503, 0) and "try again" in answer["error"]
    status, answer, asked = _call(app, "POST", "/v1/models/cancer:predict", {**auth}, [b"[" * 1500, b"[" * 1500])
    assert (status, asked) == (503, 2)  # streamed: refused at the chunk that no longer fits
    assert gate.budget.used == 8000  # everything this test's requests took was given back
    gate.budget.used = 0
    status, answer, _ = _call(app, "POST", "/v1/models/cancer:predict", {**auth, "Content-Length": "3000"}, [b"x"])
    assert status != 503 and gate.budget.used == 0


# -- a real server --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _status_of(sock: socket.socket, timeout: float = 60) -> tuple[int, bytes]:
    """Read one response's status line and what follows it (as far as it came)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        part = sock.recv(65536)
        if not part:
            break
        rest += part
    return status, rest


def _chunked_until_answered(port: int, headers: str, total: int, chunk: bytes) -> int:
    """POST a chunked body of up to ``total`` bytes, stopping as soon as the server answers; its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST /v1/models/cancer:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Transfer-Encoding: chunked\r\n{headers}\r\n".encode())
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent = 0
        try:
            while sent < total:
                readable, writable, _ = select.select([sock], [sock], [], 30)
                if readable:
                    break
                if writable:
                    sock.sendall(frame)
                    sent += len(chunk)
        except OSError:  # the server closed the connection after answering
            pass
        return _status_of(sock)[0]


def _start_server(tmp_path, **env_extra) -> tuple[subprocess.Popen, int, str]:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    ws = open_workspace(url, home=home)
    ws.seed(sample_registry_files())
    token = ws.users.add_token(OP, "ci", "viewer")
    ws.close()
    port = _free_port()
    env = {**os.environ, "GLASSBOX_HOME": str(home), "GLASSBOX_DATABASE_URL": url, "PYTHONPATH": str(ROOT),
           "GLASSBOX_EXTERNAL_WORKER": "1", **env_extra}
    server = subprocess.Popen([sys.executable, "-m", "explain", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
                if _status_of(sock)[0] == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, server.stderr.read()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
    return server, port, token


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_serve_answers_100_chunked_bodies_without_a_token_401_without_holding_them(tmp_path):
    server, port, _ = _start_server(tmp_path)
    try:
        before = _rss_bytes(server.pid)
        peak, stop = [before], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes(server.pid))
                time.sleep(0.005)

        chunk = b"[0.5, 0.5, 0.5]," * 4096  # 64 KiB a chunk, up to 16 MiB a request (the per-request cap)
        statuses: list[int] = [0] * 100

        def attack(i: int) -> None:
            headers = "" if i % 2 else "Authorization: Bearer gbx_not_a_token\r\n"
            statuses[i] = _chunked_until_answered(port, headers, 16 * 1024 * 1024, chunk)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=attack, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        time.sleep(0.2)
        stop.set()
        watcher.join(5)
        assert server.poll() is None
        assert statuses == [401] * 100
        # before the gate, each of these bodies was read (up to 16 MiB) before the token was looked at
        assert peak[0] - before < 64 * 1024 * 1024, f"the server grew by {(peak[0] - before) / 2**20:.0f} MiB"
    finally:
        _stop(server)


def test_serve_caps_the_bytes_held_across_requests_in_flight(tmp_path):
    server, port, token = _start_server(tmp_path, GLASSBOX_API_MAX_BUFFERED_MB="1")
    auth = f"Authorization: Bearer {token}\r\n"
    try:
        # A declares 700 KiB; "100 Continue" means the gate checked its token, reserved it and began to read
        held = socket.create_connection(("127.0.0.1", port), timeout=60)
        held.sendall(f"POST /v1/models/cancer:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {700 * 1024}\r\nExpect: 100-continue\r\n{auth}\r\n".encode())
        assert held.recv(100).startswith(b"HTTP/1.1 100 ")
        # B declares 700 KiB too: it does not fit beside A, so 503 before a byte of it is read (no 100 Continue)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"POST /v1/models/cancer:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {700 * 1024}\r\n"
                         f"Expect: 100-continue\r\n{auth}\r\n".encode())
            status, answer = _status_of(sock)
            assert status == 503 and "try again" in json.loads(answer)["error"]
        # C streams without a length: refused once what it sent no longer fits, not after 16 MiB
        assert _chunked_until_answered(port, auth, 16 * 1024 * 1024, b"[0.5]," * 10_000) == 503
        # A's body arrives (not JSON): answered, and its bytes given back
        held.sendall(b"x" * (700 * 1024))
        status, answer = _status_of(held)
        held.close()
        assert status == 422 and "not JSON" in json.loads(answer)["error"]
        body = json.dumps({"instances": [[0.5] * 30] * 600}).encode()  # ~ 300 KiB
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"POST /v1/models/cancer:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n{auth}\r\n".encode() + body)
            status, answer = _status_of(sock)
        assert status == 200 and len(json.loads(answer)["predictions"]) == 600
    finally:
        _stop(server)
