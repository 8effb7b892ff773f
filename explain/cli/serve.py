"""Serve the HTTP API (KServe V1 shape, V2 binary tensor bodies; OpenAPI at /docs) with embedded queue workers
(``--workers N`` threads, default ``GLASSBOX_WORKERS`` or one per GPU, else min(2, cores)) unless
GLASSBOX_EXTERNAL_WORKER=1.

The serving stack (issue 23, `benchmarks/api.py` measures each):

- ``--http``: uvicorn's HTTP parser. ``auto`` (the default) is httptools' C parser when installed
  (requirements.txt), else h11, pure Python, which costs more per request.
- ``--loop``: ``auto`` (the default) is uvloop's event loop when installed, else asyncio's.
- Keep-alive: a connection stays open between requests (uvicorn's ``timeout_keep_alive``, 5 s), so a
  client that reuses it pays no TCP connect per request.
- ``--processes N``: N server processes on one port (``SO_REUSEPORT``: the kernel spreads the
  connections among them), each with its own event loop, GIL, model store and batcher, so a batch
  gathers only its own process's requests; the first process runs the queue workers, the others
  only answer (``:explain`` jobs go to the one queue). Default 1: on a machine of few cores the
  processes take turns with the models' own threads.
"""
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
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="server processes sharing the port (SO_REUSEPORT), each with its own batcher (default 1)")
    parser.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                        help="HTTP parser (default auto: httptools when installed)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop (default auto: uvloop when installed)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # one of --processes' others


def _listen(host: str, port: int, reuse_port: bool, first: bool = True):
    """A listening TCP socket on ``host:port``, with ``SO_REUSEPORT`` when others share the port.
    The ``first`` process of a shared port binds it alone first: the kernel lets any process of this
    user that set ``SO_REUSEPORT`` share it, and an unrelated one listening there already (an older
    serve) would silently be given a share of the connections and their tokens."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuse_port and first and port:
        with socket.socket(family, socket.SOCK_STREAM) as alone:  # EADDRINUSE when anyone listens there
            alone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            alone.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


#: the first process's pid, given to the others (`_die_with_parent`)
PARENT_ENV = "GLASSBOX_SERVE_PARENT"


def _die_with_parent(parent: int) -> None:
    """In one of ``--processes``' others, first thing: SIGTERM when the first process (``parent``) ends,
    however it ends (Linux), and an end at once when it ended before this was asked (the signal would
    never come). Asked here, not in a ``preexec_fn``: the first process forks with its queue workers'
    threads running, and a forked child that loads a library before ``exec`` can deadlock."""
    import ctypes
    import os
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _others(args: argparse.Namespace, port: int) -> list:
    """The ``--processes`` beyond the first: the same command with ``--reuse-port`` on the first's ``port``
    (the one it was given, or the kernel's pick for ``--port 0``), no queue workers."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "explain", "serve", "--host", args.host, "--port", str(port),
            "--http", args.http, "--loop", args.loop, "--reuse-port"]
    if args.max_batch_rows is not None:
        argv += ["--max-batch-rows", str(args.max_batch_rows)]
    if args.max_delay_ms is not None:
        argv += ["--max-delay-ms", str(args.max_delay_ms)]
    env = {**os.environ, "GLASSBOX_EXTERNAL_WORKER": "1", PARENT_ENV: str(os.getpid())}
    return [subprocess.Popen(argv, env=env) for _ in range(args.processes - 1)]


def run(args: argparse.Namespace) -> dict:
    import os

    if args.reuse_port and os.environ.get(PARENT_ENV, "").isdigit():
        _die_with_parent(int(os.environ[PARENT_ENV]))  # before anything else: the first may be gone already
    import socket

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
    if args.processes < 1:
        raise UsageError("--processes wants at least 1.")
    shared = args.processes > 1 or args.reuse_port
    if shared and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--processes needs SO_REUSEPORT, which this system lacks.", "Serve with --processes 1.")
    ws = cli_workspace()
    if not external_worker():
        start_embedded(ws, args.workers)  # the app's own pool: create_app finds it running
    app = create_app(ws, batch_rows=args.max_batch_rows, delay_ms=args.max_delay_ms)
    try:
        sock = _listen(args.host, args.port, shared, first=not args.reuse_port)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port} ({exc.strerror or exc}).") from None
    others = _others(args, sock.getsockname()[1]) if args.processes > 1 else []
    server = uvicorn.Server(uvicorn.Config(app, http=args.http, loop=args.loop, log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:  # uvicorn re-raises a SIGTERM / SIGINT as it ends, so the others' PR_SET_PDEATHSIG ends them then
        for child in others:
            child.terminate()
        for child in others:
            child.wait(30)
        sock.close()
    return {"served": f"http://{args.host}:{args.port}", "processes": args.processes}
