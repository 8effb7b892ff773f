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
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker threads in this process (default GLASSBOX_WORKERS, else one per GPU, "
                             "else min(2, cores); with --gpu, threads on that GPU)")
    parser.add_argument("--gpu", type=int, default=None, metavar="INDEX",
                        help="own this GPU only (one worker per GPU: --gpu 0, --gpu 1, ...); default: what torch sees")


def run(args: argparse.Namespace) -> dict:
    from explain.cli.workspace_arg import cli_workspace
    from explain.service.worker import WorkerPool, recover_now

    if args.gpu is not None:
        if args.gpu < 0:
            raise UsageError("--gpu wants a GPU index (0, 1, ...).")
        # before anything initialises CUDA: this process sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers wants at least 1.")
    name = args.name or (f"{socket.gethostname()}:gpu{args.gpu}:{os.getpid()}" if args.gpu is not None else None)
    ws = cli_workspace()
    # one thread per GPU by default, but a --gpu worker owns one GPU: one thread unless asked
    pool = WorkerPool(ws, args.workers or (1 if args.gpu is not None else None), name=name, poll_s=args.poll)
    recover_now(ws)  # as it starts: a killed server's or worker's jobs are queued again, then run
    names = [w.name for w in pool.workers]
    if args.once:
        return {"worker": names[0], "workers": names, "ran": pool.run_until_empty()}
    signal.signal(signal.SIGTERM, lambda *_: (pool.stop.set(), pool.wake()))
    pool.start()
    try:
        while not pool.stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    pool.shutdown()
    return {"worker": names[0], "workers": names, "ran": sum(pool.ran)}
