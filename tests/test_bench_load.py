"""`benchmarks/api.py`'s load generator (`_load`): every answer counted once, on kept-alive connections,
and an answer other than 200 stops it with its status line. No timing is asserted."""
from __future__ import annotations

import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_api", ROOT / "benchmarks" / "api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    seen = {"requests": 0, "connections": set()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept alive

        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen["requests"] += 1
            seen["connections"].add(self.client_address)
            status = 200 if self.headers["Authorization"] == "Bearer good" else 401
            answer = b'{"inference-header-content-length": 1}' + body  # a header name inside the body
            self.send_response(status)
            self.send_header("Inference-Header-Content-Length", "7")  # ends in content-length: not the length
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/m:predict", seen
    httpd.shutdown()


def test_the_load_generator_counts_each_answer_on_kept_alive_connections(server):
    url, seen = server
    bench = _bench()
    requests = [bench._request_bytes(url, "good", f"row {i}".encode(), {"Content-Type": "application/json"})
                for i in range(3)]
    before = seen["requests"]
    answered = bench._load(url, requests, 0.2)
    assert answered == seen["requests"] - before >= 3
    assert len(seen["connections"]) == 3  # one connection per client, kept for all its requests
    with pytest.raises(RuntimeError, match="401"):
        bench._load(url, [bench._request_bytes(url, "bad", b"x", {})], 0.2)
