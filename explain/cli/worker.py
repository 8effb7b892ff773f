"""Run the job queue's worker: claim queued jobs and run them until stopped (Ctrl-C / SIGTERM)."""
from __future__ import annotations

import argparse
import os
import signal
import socket

from explain.errors import UsageError

NAME = "worker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=None, help="this worker's name in the queue (default host:pid)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between looks at an empty queue")
    parser.add_argument("--once", action="store_true", help="run the queued jobs, then stop")
    parser.add_argument("--gpu", type=int, default=None, metavar="INDEX",
                        help="own this GPU only (one worker per GPU: --gpu 0, --gpu 1, ...); default: what torch sees")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_workspace
    from explain.service.worker import Worker

    if args.gpu is not None:
        if args.gpu < 0:
            raise UsageError("--gpu wants a GPU index (0, 1, ...).")
        # before anything initialises CUDA: this process sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    name = args.name or (f"{socket.gethostname()}:gpu{args.gpu}:{os.getpid()}" if args.gpu is not None else None)
    worker = Worker(cli_workspace(), name=name, poll_s=args.poll)
    if args.once:
        ran = 0
        while worker.run_once() is not None:
            ran += 1
        return {"worker": worker.name, "ran": ran}
    signal.signal(signal.SIGTERM, lambda *_: (worker.stop.set(), worker.wake.set()))
    return {"worker": worker.name, "ran": worker.run_forever()}
