"""Serve the HTTP API (KServe V1 shape; OpenAPI at /docs) with embedded queue workers (``--workers N``
threads, default ``GLASSBOX_WORKERS`` or one per GPU, else min(2, cores)) unless GLASSBOX_EXTERNAL_WORKER=1."""
from __future__ import annotations

import argparse

NAME = "serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8600, help="port (default 8600)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="queue worker threads (default GLASSBOX_WORKERS, else one per GPU, else min(2, cores))")
    parser.add_argument("--max-batch-rows", type=int, default=None, metavar="N",
                        help="most rows concurrent requests are batched into (default GLASSBOX_MAX_BATCH_ROWS, 64)")
    parser.add_argument("--max-delay-ms", type=float, default=None, metavar="MS",
                        help="longest a batch waits for company (default GLASSBOX_MAX_DELAY_MS, 5; 0: no batching)")


def run(args: argparse.Namespace) -> dict:
    import uvicorn

    from explain.cli.workspace_arg import cli_workspace
    from explain.config import external_worker
    from explain.errors import UsageError
    from explain.service.api import create_app
    from explain.service.worker import start_embedded

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers wants at least 1.")
    if (args.max_batch_rows is not None and args.max_batch_rows < 1) or (args.max_delay_ms or 0) < 0:
        raise UsageError("--max-batch-rows wants at least 1 and --max-delay-ms at least 0.")
    ws = cli_workspace()
    if not external_worker():
        start_embedded(ws, args.workers)  # the app's own pool: create_app finds it running
    app = create_app(ws, batch_rows=args.max_batch_rows, delay_ms=args.max_delay_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return {"served": f"http://{args.host}:{args.port}"}
