"""KServe V2's binary tensor bodies on ``:predict`` and ``:explain`` (`explain.service.binary`): the same
numbers as the JSON bodies, and every malformed body (sizes that lie, overflow, datatypes, shapes,
non-finite values, random corruption) a one-line 400, never a 500."""
from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from explain.errors import UsageError
from explain.service import binary
from explain.service.api import create_app
from explain.service.worker import stop_embedded
from explain.workspace import Actor, open_workspace
from sample_models import load_sample, sample_inputs, sample_registry_files

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)
X = sample_inputs("cancer")["inputs"]  # [N, 30] float32
IDS = sample_inputs("sentiment")["inputs"]  # [N, L] int64


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("binary")
    ws = open_workspace(f"sqlite:///{tmp / 'glassbox.db'}", home=tmp / "home")
    ws.seed(sample_registry_files())
    tokens = {role: ws.users.add_token(OP, role, role) for role in ("viewer", "editor")}
    client = TestClient(create_app(ws, worker=True, max_body=64 * 1024), raise_server_exceptions=False)
    yield client, {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
    stop_embedded(ws)
    ws.close()


def _post(client, headers, model: str, body: bytes, extra: dict | None = None, action: str = "predict"):
    return client.post(f"/v1/models/{model}:{action}", content=body,
                       headers={**headers, "Content-Type": binary.OCTET_STREAM, **(extra or {})})


def _raw(header: dict, data: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def _one_line_400(response) -> str:
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_binary_predict_answers_the_models_probabilities_as_bytes_or_json(api):
    client, h = api
    want = load_sample("cancer").predict_proba(X[:5])  # [5, 2] float32
    body, headers = binary.encode_request(X[:5])
    r = client.post("/v1/models/cancer@v1:predict", content=body, headers={**h["viewer"], **headers})
    assert r.status_code == 200 and r.headers["content-type"] == binary.OCTET_STREAM
    head = json.loads(r.content[:int(r.headers["inference-header-content-length"])])
    assert head["model_name"] == "cancer" and head["model_version"] == "1"
    assert head["outputs"][0] == {"name": "probabilities", "shape": [5, 2], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 40}}
    got = binary.decode_response(r.content, r.headers)["probabilities"]
    assert got.dtype == np.float32 and got.shape == (5, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the same rows as float64, answer as JSON (no binary_data_output): the same numbers, V2's "outputs"
    body, headers = binary.encode_request(X[:5].astype(np.float64), binary_output=False)
    r = client.post("/v1/models/cancer:predict", content=body, headers={**h["viewer"], **headers})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    (out,) = r.json()["outputs"]
    assert out["shape"] == [5, 2] and len(out["data"]) == 10
    np.testing.assert_allclose(binary.decode_response(r.content, r.headers)["probabilities"], want, atol=1e-6)
    # asked per output (Triton's "binary_data": true) instead of binary_data_output
    header = {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    body, extra = _raw(header, X[:1].tobytes())
    r = _post(client, h["viewer"], "cancer", body, extra)
    np.testing.assert_allclose(binary.decode_response(r.content, r.headers)["probabilities"], want[:1], atol=1e-6)


def test_binary_token_ids_give_the_json_bodys_answer(api):
    client, h = api
    body, headers = binary.encode_request(IDS[:3].astype(np.int32))  # INT32 ids: the model's int64, same rows
    r = client.post("/v1/models/sentiment:predict", content=body, headers={**h["viewer"], **headers})
    as_json = client.post("/v1/models/sentiment:predict", json={"instances": IDS[:3].tolist()}, headers=h["viewer"])
    np.testing.assert_allclose(binary.decode_response(r.content, r.headers)["probabilities"],
                               as_json.json()["predictions"], rtol=0, atol=1e-7)


def test_binary_explain_equals_the_json_explain(api):
    client, h = api
    row = X[3:4]
    params = {"method": "integrated_gradients", "steps": 8, "target": 1}
    body, headers = binary.encode_request(row, params)
    r = client.post("/v1/models/cancer:explain", content=body, headers={**h["editor"], **headers})
    as_json = client.post("/v1/models/cancer:explain", json={"instances": row.tolist(), "parameters": params},
                          headers=h["editor"])
    assert r.status_code == 200 and as_json.status_code == 200, (r.text, as_json.text)
    (got,), (want,) = r.json()["explanations"], as_json.json()["explanations"]
    assert got["target"] == want["target"] == 1
    np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-6)
    # the viewer may predict in bytes but not explain: 403 before the body is read
    assert _post(client, h["viewer"], "cancer", body, headers, action="explain").status_code == 403


def _input(shape, datatype="FP32", size=None, **more):
    if size is None:
        size = math.prod(shape) * np.dtype(binary.DATATYPES[datatype]).itemsize
    return {"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}, **more}


ROW = X[0].tobytes()  # 120 bytes
MALFORMED = [  # (header or raw body, data, extra headers, words in the one line)
    ({"inputs": [_input([1, 30])]}, ROW, {"Inference-Header-Content-Length": None}, "needs the"),
    (None, b"{}" + ROW, {"Inference-Header-Content-Length": "-1"}, "whole number of bytes"),
    (None, b"{}" + ROW, {"Inference-Header-Content-Length": "x12"}, "whole number of bytes"),
    (None, b"{}" + ROW, {"Inference-Header-Content-Length": "99999999999"}, "the body has"),
    (None, b"{}" + ROW, {"Inference-Header-Content-Length": "999999999999999999999999"}, "whole number"),
    (None, b"{}" + ROW, {"Inference-Header-Content-Length": "0"}, "the body has"),
    (None, b"\xff\xfe{" + ROW, {"Inference-Header-Content-Length": "3"}, "not a JSON header"),
    (None, b"[1]" + ROW, {"Inference-Header-Content-Length": "3"}, "JSON object"),
    (None, b"[" * 50_000, {"Inference-Header-Content-Length": "50000"}, "not a JSON header"),
    ({}, ROW, {}, 'no "inputs"'),
    ({"inputs": [_input([1, 30])] * 5}, ROW * 5, {}, "at most 4"),
    ({"inputs": [_input([1, 30]), {**_input([1, 30]), "name": "y"}]}, ROW * 2, {}, "one input tensor"),
    ({"inputs": [_input([1, 30]), _input([1, 30])]}, ROW * 2, {}, "name of its own"),
    ({"inputs": ["x"]}, ROW, {}, "JSON object"),
    ({"inputs": [_input([1, 30], "BYTES", size=120)]}, ROW, {}, "is not one of"),
    ({"inputs": [_input([1, 30], "BOOL", size=120)]}, ROW, {}, "is not one of"),
    ({"inputs": [_input([1, -30], size=120)]}, ROW, {}, "at least 0"),
    ({"inputs": [_input([1, 30.0], size=120)]}, ROW, {}, "whole number"),
    ({"inputs": [_input([True, 30], size=120)]}, ROW, {}, "whole number"),
    ({"inputs": [_input([1] * 9 + [30], size=120)]}, ROW, {}, "1 to 8 sizes"),
    ({"inputs": [_input("30", size=120)]}, ROW, {}, "shape must be a list"),
    ({"inputs": [_input([1, 30], size=-120)]}, ROW, {}, "at least 0"),
    ({"inputs": [_input([1, 30], size="120")]}, ROW, {}, "whole number"),
    ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": X[0].tolist()}]}, b"", {},
     "binary_data_size"),
    ({"inputs": [_input([1, 30], size=124)]}, ROW + b"\0" * 4, {}, "takes 120"),
    ({"inputs": [_input([2 ** 62, 2 ** 62, 30], size=8)]}, b"\0" * 8, {}, "takes"),  # overflow in int64
    ({"inputs": [_input([2 ** 40, 30])]}, ROW, {}, "add up to 131941395333120 bytes"),  # 132 TB declared
    ({"inputs": [_input([1, 30])]}, ROW + b"\0", {}, "add up to 120 bytes"),
    ({"inputs": [_input([1, 30])]}, ROW[:-1], {}, "add up to 120 bytes"),
    ({"inputs": [_input([1, 29])]}, ROW[:-4], {}, "does not fit this model"),
    ({"inputs": [_input([0, 30])]}, b"", {}, "N at least 1"),
    ({"inputs": [_input([30])]}, ROW, {}, "does not fit this model"),
    ({"inputs": [_input([1, 30])]}, np.full(30, np.nan, np.float32).tobytes(), {}, "NaN or infinite"),
    ({"inputs": [_input([1, 30], "FP64")]}, np.full(30, 1e300).tobytes(), {}, "NaN or infinite"),  # inf in float32
    ({"inputs": [_input([1, 30])], "outputs": [{"name": "logits"}]}, ROW, {}, "No output"),
    ({"inputs": [_input([1, 30])], "parameters": {"binary_data_output": "yes"}}, ROW, {}, "true or false"),
    ({"inputs": [_input([1, 30])], "parameters": [1]}, ROW, {}, "JSON object"),
]


@pytest.mark.parametrize("header, data, extra, words", MALFORMED, ids=[m[3] for m in MALFORMED])
def test_a_malformed_binary_body_is_a_one_line_400(api, header, data, extra, words):
    client, h = api
    body, headers = (data, {}) if header is None else _raw(header, data)
    headers = {k: v for k, v in {**headers, **extra}.items() if v is not None}
    assert words in _one_line_400(_post(client, h["viewer"], "cancer", body, headers))


def test_token_ids_in_bytes_meet_the_json_bodys_checks(api):
    client, h = api
    floats = np.full((1, IDS.shape[1]), 0.5)
    body, headers = binary.encode_request(floats)
    assert "not whole" in _one_line_400(client.post("/v1/models/sentiment:predict", content=body,
                                                    headers={**h["viewer"], **headers}))
    body, headers = binary.encode_request(np.full((1, IDS.shape[1]), 10 ** 9, np.int64))
    r = client.post("/v1/models/sentiment:predict", content=body, headers={**h["viewer"], **headers})
    assert "vocabulary" in _one_line_400(r).lower()


def test_corrupted_binary_bodies_never_get_a_500(api):
    """400 random corruptions of a good body's header and length (bytes flipped, cut, grown): each
    answer is 200 or a 4xx of one line."""
    client, h = api
    good, headers = binary.encode_request(X[:2])
    n = int(headers["Inference-Header-Content-Length"])
    rng = np.random.default_rng(0)
    statuses = set()
    for _ in range(400):
        body, length = bytearray(good), n
        what = rng.integers(4)
        if what == 0:  # flip header bytes
            for i in rng.integers(0, n, size=rng.integers(1, 4)):
                body[i] = int(rng.integers(256))
        elif what == 1:  # cut or grow the body
            body = body[:int(rng.integers(0, len(body)))] if rng.random() < 0.5 else body + bytes(int(rng.integers(1, 64)))
        elif what == 2:  # the header length off by a little
            length = n + int(rng.integers(-8, 9))
        else:  # a digit of the header changed (sizes, shape)
            digits = [i for i in range(n) if chr(body[i]).isdigit()]
            body[int(rng.choice(digits))] = ord(str(rng.integers(10)))
        r = _post(client, h["viewer"], "cancer", bytes(body), {"Inference-Header-Content-Length": str(length)})
        statuses.add(r.status_code)
        if r.status_code != 200:
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
            error = r.json()["error"]
            assert "\n" not in error and "Traceback" not in error
    assert 400 in statuses and 500 not in statuses


def test_a_binary_body_over_the_cap_is_413(api):
    client, h = api
    body, headers = binary.encode_request(np.zeros((600, 30), np.float32))  # 72 kB > 64 kB
    r = client.post("/v1/models/cancer:predict", content=body, headers={**h["viewer"], **headers})
    assert r.status_code == 413 and "over 65536 bytes" in r.json()["error"]


def test_read_tensors_checks_every_size_before_making_an_array():
    header = {"inputs": [_input([2 ** 31, 2 ** 31, 2 ** 31, 30])]}  # 2^93 * 120 bytes declared
    with pytest.raises(UsageError, match="add up to"):
        binary.read_tensors(header, memoryview(ROW), "inputs")
    x = np.arange(6, dtype=np.int16).reshape(2, 3)
    body, headers = binary.encode_request(x, binary_output=False)
    head, data = binary.split_body(body, headers["Inference-Header-Content-Length"])
    got = binary.read_tensors(head, data, "inputs", (3,))["inputs"]
    assert got.dtype == np.int16 and got.flags.writeable and (got == x).all()
    assert head["parameters"] == {}


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_serve_processes_share_one_port_and_answer_binary_bodies(tmp_path):
    """``serve --processes 2``: two processes on one port (SO_REUSEPORT), both answering over kept-alive
    connections with the model's numbers; the second ends with the first."""
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    ws = open_workspace(url, home=tmp_path / "home")
    ws.seed(sample_registry_files())
    token = ws.users.add_token(OP, "ci", "viewer")
    ws.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLASSBOX_HOME": str(tmp_path / "home"), "GLASSBOX_DATABASE_URL": url,
           "PYTHONPATH": str(ROOT), "GLASSBOX_EXTERNAL_WORKER": "1"}
    server = subprocess.Popen([sys.executable, "-m", "explain", "serve", "--port", str(port), "--processes", "2"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    want = load_sample("cancer").predict_proba(X[:16])  # [16, 2]
    answers: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:  # 10 requests on one kept-alive connection
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(10):
            body, headers = binary.encode_request(X[i:i + 1])
            conn.request("POST", "/v1/models/cancer:predict", body, {**headers, "Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            assert r.status == 200
            answers[i] = binary.decode_response(r.read(), r.getheaders())["probabilities"]
        conn.close()

    try:
        deadline = time.monotonic() + 180
        while len(_children(server.pid)) < 1 or not _ready(port, token):
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        (other,) = _children(server.pid)
        while not _listening(other, port):  # the second process is up once it listens too
            assert time.monotonic() < deadline, "the second process did not listen"
            time.sleep(0.3)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.terminate()
        server.wait(30)
    np.testing.assert_allclose(np.concatenate([answers[i] for i in range(16)]), want, rtol=0, atol=1e-6)
    deadline = time.monotonic() + 30  # the second process shuts down after the first (SIGTERM on its death)
    while Path(f"/proc/{other}").exists() and "zombie" not in Path(f"/proc/{other}/status").read_text():
        assert time.monotonic() < deadline, "the second process outlived the first"
        time.sleep(0.2)


def _ready(port: int, token: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status == 200
    except OSError:
        return False


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port`` (its inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" and r.split()[9] in inodes for r in rows)
