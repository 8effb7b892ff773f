"""The HTTP API under load (issue 23): ``:predict`` throughput with and without dynamic batching, and
``:explain`` latency idle and beside a running batch job. Prints one JSON object.

Starts ``python -m explain serve`` as its own process (so the clients here do not share its GIL) on a
fresh workspace (SQLite in a temporary folder; ``--db postgres`` starts a PostgreSQL server the way
the tests do, `tests.workspace_db`; ``--db URL`` uses that database), once with batching off
(``--max-delay-ms 0``, the service as it was) and once with it on (``--delay-ms``), both at once, and
measures:

- predict, rows/s: **direct** = the engine's own batched ``predict_proba`` on exactly the rows the
  ``--clients`` clients send (client i sends rows ``[i*rows, (i+1)*rows)`` of those, every request),
  all of them in one call, in one thread, no HTTP: what the server would reach if serving cost
  nothing and every batch held every client's request (timed again in the servers' turns, so that
  the machine's load falls on it alike: the goal's figure); and on one request's rows; the engine
  from ``--clients`` threads in this process without and with a `Batcher` (the batching alone,
  no HTTP); then through the server: one client calling in turn, and ``--clients`` clients at
  once (each request ``--rows`` rows of ``--model``), and one client's latency, the two servers
  measured in turns; and the server's own work per request without HTTP (``server_work_ms``: one
  ``:predict`` through the ASGI app in this process, token, lookups, batching and JSON, no socket);
- explain: p50 / p95 latency of a one-input ``:explain`` (integrated gradients, ``--steps``,
  fresh inputs each time so no cache answers) idle; ``--clients`` clients asking 3 each at once (rows/s,
  and jobs a request: gathered into shared jobs); then beside a running batch job (a dataset job
  of ``--batch-rows`` rows, submitted to the queue first);
- goals: 8 clients >= 1.5x one client in turn and >= 0.5x direct batched; interactive beside a
  batch job within 3x idle.

The :predict clients send JSON bodies, or with ``--binary`` KServe V2 binary tensor bodies
(`explain.service.binary`, answers in bytes too). Their rates come from a load generator as wrk or
perf_analyzer are (`_load`): one kept-alive socket per client, all driven from one thread, prebuilt
request bytes, answers checked to be 200s and counted, not decoded (the warm-up and the latencies go
through ``http.client`` and decode every answer). On a machine of few cores the clients share the
cores with the server they measure: each server's CPU seconds per row served
(``server_cpu_ms_per_row``, its processes' user + system time over the clients' phase) and the
clients' own (``clients_cpu_ms_per_row``) are printed beside the rates, so the figure can be judged.
``--variants`` picks the servers measured in turns: ``no_batching`` (``--max-delay-ms 0``),
``batching`` (the goals' server: ``--delay-ms``, the default stack), ``plain_stack`` (batching on h11
and asyncio's loop: without httptools and uvloop) and ``processes`` (batching, ``serve --processes
N``); ``--only-predict`` skips ``:explain``.

    python benchmarks/api.py [--model cancer|shapes|sentiment] [--clients 8] [--rows 1] [--binary]
                             [--seconds 5] [--db sqlite|postgres|URL] [--device cpu|cuda] [--delay-ms 5]
                             [--variants no_batching,batching,plain_stack,processes] [--processes 2]

``--threads 1`` on a machine whose cores other work shares (OpenMP threads spin-wait for peers that
are not running). ``--device cuda``: the direct calls run on the GPU and ``:explain`` asks for ``device: cuda``;
the API's ``:predict`` runs where its model cache loads models (the CPU).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _call(url: str, token: str, body: dict | bytes | None = None) -> dict:
    """``body``: a dict, or its JSON already encoded (the :predict clients encode theirs once: the
    client's own encoding would share the machine's cores with the server it measures)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


_local = threading.local()


def _post(url: str, token: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, list]:
    """A POST on this thread's kept-alive connection to ``url``'s server: the answer's body and headers."""
    parts = urllib.parse.urlsplit(url)
    conns = _local.__dict__.setdefault("conns", {})
    for attempt in (0, 1):
        conn = conns.get(parts.netloc)
        if conn is None:
            conn = conns[parts.netloc] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        try:
            conn.request("POST", parts.path, body, {**headers, "Authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            data = answer.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            conns.pop(parts.netloc)
            if attempt:
                raise
            continue
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {data[:300]!r}")
        return data, answer.getheaders()
    raise AssertionError("unreachable")


def _request_bytes(url: str, token: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole ``POST`` of ``body`` to ``url``, as the bytes a load generator sends again and again."""
    parts = urllib.parse.urlsplit(url)
    head = {"Host": parts.netloc, "Authorization": f"Bearer {token}", "Content-Length": str(len(body)), **headers}
    return (f"POST {parts.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
            + "\r\n").encode("latin-1") + body


def _load(url: str, requests: list[bytes], seconds: float) -> int:
    """A load generator (wrk's way): one kept-alive socket per request of ``requests`` (prebuilt bytes,
    ``_request_bytes``), all driven from this one thread, each sending its request again as soon as its
    answer is whole, for ``seconds``; the answers counted (each checked to be a 200), not decoded. So
    the clients cost the cores they share with the server a few tens of microseconds a request, not the
    ~0.3 ms of a thread per client with ``http.client`` and a decode (``clients_cpu_ms_per_row``)."""
    import selectors

    parts = urllib.parse.urlsplit(url)
    select = selectors.DefaultSelector()
    socks = []
    try:
        for request in requests:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=600)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
            select.register(sock, selectors.EVENT_READ, [request, bytearray()])
        stop, answered, live = time.monotonic() + seconds, 0, len(socks)
        for sock, request in zip(socks, requests):
            sock.sendall(request)
        while live:
            for key, _ in select.select(600):
                request, buffer = key.data
                chunk = key.fileobj.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("the server closed a connection")
                buffer += chunk
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = bytes(buffer[:end]).lower()
                at = head.find(b"\r\ncontent-length:") + len(b"\r\ncontent-length:")
                length = int(head[at:].split(b"\r\n", 1)[0])
                if len(buffer) < end + 4 + length:
                    continue
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(f"{bytes(buffer[:300])!r}")
                del buffer[:end + 4 + length]  # one answer per request sent: nothing follows it
                answered += 1
                if time.monotonic() < stop:
                    key.fileobj.sendall(request)
                else:
                    select.unregister(key.fileobj)
                    live -= 1
        return answered
    finally:
        for sock in socks:
            sock.close()
        select.close()


def _predict_body(rows: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    from explain.service.binary import encode_request

    if binary:
        return encode_request(rows)
    return json.dumps({"instances": rows.tolist()}).encode(), {"Content-Type": "application/json"}


def _predicted(data: bytes, headers: list, binary: bool) -> np.ndarray:
    """A :predict answer decoded, as its client would: the probabilities [n, K]."""
    from explain.service.binary import decode_response

    if binary:
        return decode_response(data, headers)["probabilities"]
    return np.asarray(json.loads(data)["predictions"], dtype=np.float32)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (``serve --processes``' others)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid] + [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _rate(fn, seconds: float, clients: int) -> float:
    """Calls per second of ``fn(i)`` from ``clients`` threads for about ``seconds``."""
    stop, counts = time.monotonic() + seconds, [0] * clients

    def loop(i):
        while time.monotonic() < stop:
            fn(i)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def _latencies(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def _ms(values: list[float]) -> dict:
    return {"p50_ms": round(1000 * float(np.percentile(values, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(values, 95)), 2), "n": len(values)}


def _listening(port: int) -> int:
    """How many sockets listen on ``port`` (``serve --processes``: one per process)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


class Server:
    """``python -m explain serve`` on a free port, on the benchmark's workspace (``extra``: more of its
    arguments)."""

    def __init__(self, url: str, home: Path, token: str, delay_ms: float, batch_rows: int, extra: tuple = ()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "GLASSBOX_HOME": str(home), "GLASSBOX_DATABASE_URL": url, "PYTHONPATH": str(ROOT),
               "GLASSBOX_MAX_JOBS": "100000"}
        env.pop("GLASSBOX_EXTERNAL_WORKER", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "explain", "serve", "--port", str(self.port), "--max-delay-ms", str(delay_ms),
             "--max-batch-rows", str(batch_rows), *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 180
        processes = int(extra[extra.index("--processes") + 1]) if "--processes" in extra else 1
        while True:
            try:
                _call(f"{self.base}/models", token)
                if _listening(self.port) >= processes:  # every process of ``--processes`` takes connections
                    return
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.process.stderr.read()[-800:]}") from None
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _workspace(db: str, home: Path):
    """The benchmark's database URL (and a cleanup), seeded with the samples and an editor's token."""
    from explain.workspace import Actor, open_workspace
    from sample_models import sample_registry_files

    cleanup = lambda: None  # noqa: E731
    if db == "sqlite":
        url = f"sqlite:///{home / 'glassbox.db'}"
    elif db == "postgres":
        from tests.workspace_db import postgres_server

        server = postgres_server()
        url = server.create_database()
        cleanup = lambda: server.drop_database(url)  # noqa: E731
    else:
        url = db
    ws = open_workspace(url, home=home)
    ws.seed(sample_registry_files())
    token = ws.users.add_token(Actor("bench", operator=True), f"bench{time.time_ns()}", "editor")
    return ws, url, token, cleanup


def _predict(servers: dict[str, Server], model_name: str, x: np.ndarray, args, direct, rounds: int = 4) -> dict:
    """Each server's :predict figures, measured in turns (request by request for the latency, in
    ``rounds`` slices of ``--seconds`` for the rates), so that a change in the machine's load
    while the benchmark runs falls on both alike; and the CPU seconds the server (all its processes)
    and the clients spent per row while the clients were at it. ``direct()``, the engine on every
    client's rows in one call, is timed in the same turns (its rows/s and CPU ms per row, this
    process's CPU time while it alone runs)."""
    rows = args.rows
    bodies = [_predict_body(x[i * rows:(i + 1) * rows], args.binary) for i in range(args.clients)]  # client i's
    urls = {label: f"{server.base}/models/{model_name}:predict" for label, server in servers.items()}
    for url in urls.values():  # every process of every server loads the model (fresh connections)
        for i in range(30):
            _local.__dict__.get("conns", {}).clear()
            _post(url, args.token, *bodies[i % len(bodies)])
    _local.__dict__.get("conns", {}).clear()

    def ask(url: str, i: int) -> None:
        data, headers = _post(url, args.token, *bodies[i])
        _predicted(data, headers, args.binary)

    lone: dict[str, list[float]] = {label: [] for label in servers}
    for i in range(60):
        for label, url in urls.items():
            start = time.perf_counter()
            ask(url, i % len(bodies))
            lone[label].append(time.perf_counter() - start)
    one, many = dict.fromkeys(servers, 0.0), dict.fromkeys(servers, 0.0)
    server_cpu, client_cpu, served = dict.fromkeys(servers, 0.0), dict.fromkeys(servers, 0.0), dict.fromkeys(servers, 0)
    direct_rows, direct_cpu, direct_calls = 0.0, 0.0, 0
    for _ in range(rounds):
        mine, started = time.process_time(), time.monotonic()
        rate = _rate(lambda i: direct(), args.seconds / rounds, 1)
        direct_calls += round(rate * (time.monotonic() - started))
        direct_cpu += time.process_time() - mine
        direct_rows += rate * len(x) / rounds
        for label, url in urls.items():
            sent = [_request_bytes(url, args.token, *body) for body in bodies]  # client i's request, prebuilt
            started = time.monotonic()
            one[label] += _load(url, sent[:1], args.seconds / rounds) / (time.monotonic() - started) * rows
            cpu, mine, started = _cpu_s(servers[label].process.pid), time.process_time(), time.monotonic()
            answered = _load(url, sent, args.seconds / rounds)
            rate = answered / (time.monotonic() - started)
            served[label] += answered * rows
            server_cpu[label] += _cpu_s(servers[label].process.pid) - cpu
            client_cpu[label] += time.process_time() - mine
            many[label] += rate * rows
    return {"direct_batched_rows_s": round(direct_rows, 1),
            "direct_cpu_ms_per_row": round(1000 * direct_cpu / max(1, direct_calls * len(x)), 4),
            **{label: {"one_client_rows_s": round(one[label] / rounds, 1), "clients_rows_s": round(many[label] / rounds, 1),
                    "one_client_latency": _ms(lone[label]),
                    "server_cpu_ms_per_row": round(1000 * server_cpu[label] / max(1, served[label]), 4),
                    "clients_cpu_ms_per_row": round(1000 * client_cpu[label] / max(1, served[label]), 4)}
               for label in servers}}


def _server_work(ws, model_name: str, rows: np.ndarray, token: str, delay_ms: float, binary: bool,
                 n: int = 300, clients: int = 8) -> dict:
    """One ``:predict`` of ``rows`` through the API's ASGI app in this process, ``n`` times in turn: the
    server's work per request (token, lookups, body, batching, the model, JSON) without a socket or
    HTTP parsing; the threads' hops included. Then ``n`` requests from ``clients`` at once
    (``concurrent_cpu_ms``: this process's CPU time a request, batches of ``clients`` rows; the
    ``concurrent_batch_requests`` mean)."""
    import asyncio

    from explain.service.api import create_app

    app = create_app(ws, worker=False, delay_ms=delay_ms)
    body, headers = _predict_body(rows, binary)
    path = f"/v1/models/{model_name}:predict"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-length", str(len(body)).encode()),
                         *((k.lower().encode(), v.encode()) for k, v in headers.items())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def one() -> None:
        given, status = [], []

        async def receive():
            given.append(1)
            return {"type": "http.request", "body": body, "more_body": False} if len(given) == 1 else \
                {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app({**scope, "state": {}}, receive, send)
        assert status == [200], status

    async def measure() -> list[float]:
        for _ in range(20):  # the model loaded, the lookups remembered
            await one()
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await one()
            out.append(time.perf_counter() - start)
        return out

    async def client() -> None:
        for _ in range(n // clients):
            await one()

    async def concurrent() -> float:
        await asyncio.gather(*(one() for _ in range(clients)))
        app.state.batcher.batches.clear()
        cpu = time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.process_time() - cpu

    figures = _ms(asyncio.run(measure()))
    cpu_s = asyncio.run(concurrent())
    batches = [requests for _, requests in app.state.batcher.batches]
    return {**figures, "concurrent_cpu_ms": round(1000 * cpu_s / (n // clients * clients), 3),
            "concurrent_batch_requests": round(float(np.mean(batches)), 1) if batches else None}


def _fresh(row: np.ndarray, rng: np.random.Generator, seen: set[bytes], vocabulary: list[str] | None) -> np.ndarray:
    """``row`` changed a little, unlike every row in ``seen`` (added to it), so that the worker's
    attribution cache never answers: a float row scaled by 1 + 1e-3 noise; a text row with one of
    its tokens (after the first, not padding) replaced by another word of ``vocabulary``."""
    for _ in range(100):  # a row with no word to change comes back as it is
        if row.dtype.kind == "f":
            out = (row * (1 + 1e-3 * rng.standard_normal(row.shape))).astype(np.float32)
        else:
            out, words = row.copy(), np.flatnonzero(row)[1:]
            if len(words) and vocabulary:
                out[rng.choice(words)] = rng.integers(3, len(vocabulary))  # past <pad>, <unk>, <cls>
        if out.tobytes() not in seen:
            break
    seen.add(out.tobytes())
    return out


def _explain(base: str, ws, token: str, model, model_name: str, x: np.ndarray, args) -> dict:
    from explain.dataset.job import dataset_job
    from explain.dataset.reading import Dataset
    from explain.service.client import submit
    from explain.workspace import Actor

    rng = np.random.default_rng(0)
    params = {"method": "integrated_gradients", "steps": args.steps, "tolerance": 1.0,
              **({"device": args.device} if args.device != "cpu" else {})}

    asked: list[str] = []
    seen: set[bytes] = set()

    def ask(i):
        row = _fresh(x[i % len(x)], rng, seen, model.spec.vocabulary)
        answer = _call(f"{base}/models/{model_name}:explain", token, {"instances": row.tolist(), "parameters": params})
        asked.append(answer["job"])

    def phases(jobs: list[str]) -> dict:
        """Where a request's time went: queued (created -> claimed) and running (claimed -> finished)."""
        from datetime import datetime

        infos = [ws.jobs.get(owner, j) for j in jobs]
        at = datetime.fromisoformat
        return {"queued_p50_ms": round(1000 * float(np.median([(at(j.started) - at(j.created)).total_seconds()
                                                                for j in infos])), 1),
                "running_p50_ms": round(1000 * float(np.median([(at(j.finished) - at(j.started)).total_seconds()
                                                                 for j in infos])), 1)}

    owner = Actor("bench", operator=True)
    ask(0)  # the worker loads the model
    asked.clear()
    idle = _latencies(ask, args.samples)
    idle_jobs, asked[:] = list(asked), []
    # --clients one-input requests at once, each client 3 in turn: gathered into shared jobs (`Batcher.arun`)
    per_client, start = 3, time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [ask(c * per_client + k) for k in range(per_client)])
               for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = {"rows_s": round(len(asked) / (time.perf_counter() - start), 1),
                "one_client_in_turn_rows_s": round(1 / float(np.mean(idle)), 1),
                "jobs_per_request": round(len(set(asked)) / len(asked), 2)}
    asked.clear()
    big = np.concatenate([x] * (args.batch_rows // len(x) + 1))[:args.batch_rows]
    dataset = Dataset("bench", model.spec, [f"r{i}" for i in range(len(big))], None, lambda a, b: big[a:b])
    job_params, arrays, title = dataset_job(model, model_name, 1, dataset, "integrated_gradients",
                                            {k: v for k, v in params.items() if k != "method"}, None, shard_rows=64)
    job = submit(ws, owner, "dataset", job_params, title=title, inputs=arrays, priority="batch")
    while ws.jobs.get(owner, job.id).status == "queued":
        time.sleep(0.05)
    beside = _latencies(ask, args.samples)
    after = ws.jobs.get(owner, job.id)
    beside_jobs = list(asked)
    ws.jobs.cancel(owner, job.id)
    return {"idle": {**_ms(idle), **phases(idle_jobs)}, f"clients_{args.clients}": together,
            "beside_batch_job": {**_ms(beside), **phases(beside_jobs)},
            "batch_job": {"rows": args.batch_rows, "status_after": after.status, "progress_after": after.progress},
            "ratio_p50": round(float(np.percentile(beside, 50) / np.percentile(idle, 50)), 2),
            "ratio_p95": round(float(np.percentile(beside, 95) / np.percentile(idle, 95)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cancer", choices=["cancer", "shapes", "sentiment"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1, help="rows per :predict request")
    ap.add_argument("--binary", action="store_true", help=":predict clients send KServe V2 binary tensor bodies")
    ap.add_argument("--variants", default="no_batching,batching",
                    help="servers measured in turns: no_batching, batching, plain_stack, processes")
    ap.add_argument("--processes", type=int, default=2, help="serve --processes of the processes variant")
    ap.add_argument("--only-predict", action="store_true", help="skip the :explain latencies")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    ap.add_argument("--samples", type=int, default=20, help=":explain requests per latency measurement")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, default=4096, help="rows of the batch job beside :explain")
    ap.add_argument("--db", default="sqlite", help="sqlite, postgres or a database URL")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("--max-batch-rows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads here and in the server (OMP_NUM_THREADS); 1 on a crowded machine, where "
                         "OpenMP's waiting for a descheduled peer thread makes latencies of 10x")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported; the server inherits it

    import torch

    from explain.service.batching import Batcher
    from sample_models import load_sample, sample_inputs

    model, x = load_sample(args.model), sample_inputs(args.model)["inputs"]
    home = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    ws, url, args.token, cleanup = _workspace(args.db, home)

    direct = model.to(args.device) if args.device != "cpu" else model
    together = np.concatenate([x] * (args.clients * args.rows // len(x) + 1))[:args.clients * args.rows]
    one = together[:args.rows]
    direct_rows_s = _rate(lambda i: direct.predict_proba(together), args.seconds, 1) * len(together)
    direct_one_s = _rate(lambda i: direct.predict_proba(one), args.seconds, 1) * len(one)
    # the engine in this process, no HTTP: the clients' threads each calling it, without and with a Batcher
    batcher = Batcher(args.max_batch_rows, args.delay_ms / 1000)
    threads_alone = _rate(lambda i: direct.predict_proba(one), args.seconds, args.clients) * len(one)
    threads_batched = _rate(lambda i: batcher.run("k", one, direct.predict_proba), args.seconds, args.clients) * len(one)
    sizes = [rows for rows, _ in batcher.batches]

    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "db": args.db if args.db in ("sqlite", "postgres") else "url", "model": args.model,
              "clients": args.clients, "rows_per_request": args.rows,
              "predict": {"direct_batched_rows_s_before_servers": round(direct_rows_s, 1), "direct_one_request_rows_s": round(direct_one_s, 1),
                          "engine_threads_unbatched_rows_s": round(threads_alone, 1),
                          "engine_threads_batched_rows_s": round(threads_batched, 1),
                          "engine_threads_batch_rows_mean": round(float(np.mean(sizes)), 1) if sizes else None}}
    result["predict"]["server_work_ms"] = _server_work(ws, args.model, one, args.token, args.delay_ms, args.binary,
                                                       clients=args.clients)
    variants = {"no_batching": (0.0, ()), "batching": (args.delay_ms, ()),
                "plain_stack": (args.delay_ms, ("--http", "h11", "--loop", "asyncio")),
                "processes": (args.delay_ms, ("--processes", str(args.processes)))}
    labels = list(dict.fromkeys(["batching", *args.variants.split(",")]))
    servers: dict[str, Server] = {}
    try:  # all at once, measured in turns: batching off (the service as it was), on, and the other stacks
        for label in labels:
            delay, extra = variants[label]
            servers[label] = Server(url, home, args.token, delay, args.max_batch_rows, extra)
        # direct, measured again in the servers' turns: the figure the goal divides by
        result["predict"].update(_predict(servers, args.model, together, args, lambda: direct.predict_proba(together)))
        for label in labels[1:]:
            servers.pop(label).stop()  # their queue workers would share the batch job
        if not args.only_predict:
            result["explain"] = _explain(servers["batching"].base, ws, args.token, model, args.model, x, args)
    finally:
        for server in servers.values():
            server.stop()
        ws.close()
        cleanup()
    p = result["predict"]
    on = p["batching"]
    vs_direct = on["clients_rows_s"] / p["direct_batched_rows_s"]
    goals = result["goals"] = {
        "clients_vs_one_client_in_turn": round(on["clients_rows_s"] / on["one_client_rows_s"], 2),  # >= 1.5
        "clients_vs_direct_batched": round(vs_direct, 3),  # >= 0.5
        "clients_vs_direct_batched_met": vs_direct >= 0.5,
        # direct: predict_proba on the clients' rows, all in one call, one thread, no HTTP (see the docstring)
        "direct_rows_per_call": args.clients * args.rows,
        # the direct call's CPU per row, beside the server's (`server_cpu_ms_per_row`): what serving adds
        "direct_cpu_ms_per_row": p["direct_cpu_ms_per_row"],
        # one process serves a request in server_work_ms at best (its event loop and the GIL are one):
        # rows/s it cannot pass in turn, however the rows are batched, before HTTP is counted
        "server_work_bound_rows_s": round(1000 * args.rows / p["server_work_ms"]["p50_ms"], 1),
        "cores_shared_by_clients_and_server": os.cpu_count(),
    }
    for label in p.keys() & {"no_batching", "plain_stack", "processes"}:
        goals[f"clients_batching_vs_{label}"] = round(on["clients_rows_s"] / p[label]["clients_rows_s"], 2)
    if "no_batching" in p:
        goals["one_client_latency_batching_vs_without"] = round(  # ~1.1 at most
            on["one_client_latency"]["p50_ms"] / p["no_batching"]["one_client_latency"]["p50_ms"], 2)
    if "explain" in result:
        goals["explain_beside_batch_vs_idle_p50"] = result["explain"]["ratio_p50"]  # <= 3
    print(json.dumps(result, indent=1))
    print(f"{args.model}, {args.rows} row(s) a request, {'binary' if args.binary else 'JSON'} bodies: {args.clients} "
          f"clients / direct batched = {vs_direct:.3f} (goal 0.5: {'met' if vs_direct >= 0.5 else 'not met'}); "
          f"server {on['server_cpu_ms_per_row']} ms CPU a row vs direct {goals['direct_cpu_ms_per_row']}, clients "
          f"{on['clients_cpu_ms_per_row']}; the clients "
          f"share the {os.cpu_count()} cores with the server", file=sys.stderr)


if __name__ == "__main__":
    main()
