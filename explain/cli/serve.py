"""Serve the HTTP API (KServe V1 shape; OpenAPI at /docs) with an embedded queue worker unless
GLASSBOX_EXTERNAL_WORKER=1."""
from __future__ import annotations

import argparse

NAME = "serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8600, help="port (default 8600)")


def run(args: argparse.Namespace) -> dict:
    import uvicorn

    from explain.cli.workspace_arg import cli_workspace
    from explain.service.api import create_app

    app = create_app(cli_workspace())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return {"served": f"http://{args.host}:{args.port}"}
