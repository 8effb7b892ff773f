"""The HTTP API against the raw model: requests/s for ``:predict`` and attributions/s for ``:explain``.

Starts the API in this process (uvicorn on a free port, the embedded queue worker, a fresh
SQLite workspace in a temporary folder) and fires requests from ``--clients`` threads:

- predict: ``POST /v1/models/cancer:predict`` with one instance; the ceiling is the model's own
  ``predict_proba`` on one row, called in a loop;
- explain: ``POST /v1/models/cancer:explain`` with ``--rows`` instances, integrated gradients with
  ``--steps`` steps; attributions/s counts instances explained. The ceiling is the method called
  directly on the same rows. Every ``:explain`` goes through the queue and saves a run.

    python benchmarks/api.py [--seconds 10] [--clients 4] [--rows 4] [--steps 32]
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _post(url: str, token: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _rate(fn, seconds: float, clients: int) -> tuple[float, int]:
    """Calls per second of ``fn`` from ``clients`` threads for about ``seconds``."""
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
    return sum(counts) / (time.monotonic() - start), sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()

    import uvicorn

    from explain.output.methods import get_method
    from explain.service.api import create_app
    from explain.workspace import Actor, open_workspace
    from sample_models import load_sample, sample_inputs, sample_registry_files

    home = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    ws = open_workspace(f"sqlite:///{home / 'glassbox.db'}", home=home)
    ws.seed(sample_registry_files())
    token = ws.users.add_token(Actor("bench", operator=True), "bench", "editor")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ws, worker=True, max_jobs=1000), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/v1/models/cancer"

    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"]
    method = get_method("integrated_gradients")
    params = {"steps": args.steps, "tolerance": 1.0}

    raw_predict, _ = _rate(lambda i: model.predict_proba(x[i:i + 1]), args.seconds / 2, 1)
    api_predict, n_pred = _rate(lambda i: _post(f"{base}:predict", token, {"instances": x[i:i + 1].tolist()}),
                                args.seconds, args.clients)
    rows = [x[(i * args.rows) % 64:(i * args.rows) % 64 + args.rows] for i in range(args.clients)]
    raw_explain, _ = _rate(lambda i: method.explain(model, rows[i], use_cache=False, **params), args.seconds / 2, 1)
    rng = np.random.default_rng(0)

    def fresh(i):  # new inputs every request: the worker's attribution cache never answers for it
        return (rows[i] * (1 + 1e-3 * rng.standard_normal(rows[i].shape))).astype(np.float32)

    api_explain, n_expl = _rate(lambda i: _post(f"{base}:explain", token, {
        "instances": fresh(i).tolist(), "parameters": {"method": "integrated_gradients", **params}}),
        args.seconds, args.clients)
    server.should_exit = True

    print(f"cancer MLP, {args.clients} client threads, {args.seconds:.0f} s each")
    print(f"predict  raw model     {raw_predict:8.1f} calls/s (1 row)")
    print(f"predict  API           {api_predict:8.1f} requests/s ({n_pred} requests)   ratio {api_predict / raw_predict:.3f}")
    print(f"explain  raw method    {raw_explain * args.rows:8.1f} attributions/s (IG, {args.steps} steps, "
          f"{args.rows} rows a call)")
    print(f"explain  API (queued)  {api_explain * args.rows:8.1f} attributions/s ({n_expl} requests, each saved as a run)"
          f"   ratio {api_explain / raw_explain:.3f}")


if __name__ == "__main__":
    main()
