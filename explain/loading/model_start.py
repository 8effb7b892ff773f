"""How a model process's child is started (`explain.loading.model_process`): its sandbox settings, the
program it runs (`SERVE_CODE`, `explain.loading.model_host.serve` after the lock-down), forked from the
warmed-up zygote or, with zygotes off, a fresh interpreter, and `prestart`, the zygote started while a
person picks a file. Everything here ends in a `Channel`; what is said on it is `model_process`'s.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import torch

from explain import config
from explain.loading.model_channel import Channel
from explain.loading.sandbox_zygote import HF_PRELOAD, MODEL_PRELOAD  # the zygotes' preloads (no torch there)

SERVE_CODE = r"""
from explain.loading import model_host as _mp
_mp.serve(DATA, ARGS, lock_down, report, _REPORT, nproc=SETTINGS.pop("nproc", False))  # after its pools start
"""


def sandbox():
    from explain.loading import sandbox

    return sandbox


def child_settings(fmt: str, imports: list[str], workdir: str) -> str:
    """The child's sandbox settings and arguments (``argv[1]``, JSON) for a graph of format ``fmt``."""
    args: dict[str, Any] = {"format": fmt, "threads": max(1, torch.get_num_threads()), "imports": imports}
    skip, devices = ["rlimit-cpu"], []
    gpu = config.model_process_gpu()
    if gpu:  # the GPUs this server sees, and their device files only
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(
            str(i) for i in range(torch.cuda.device_count()))
        args["cuda_visible"] = visible
        indices = [v for v in visible.split(",") if v.strip().isdigit()]
        devices = [d for d in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                               *(f"/dev/nvidia{i.strip()}" for i in indices)) if os.path.exists(d)]
        skip.append("rlimit-as")  # CUDA reserves far more address space than it uses: RLIMIT_DATA instead
    return json.dumps({
        "workdir": workdir, "memory": config.sandbox_memory_bytes(), "cpu": 0, "nofile": 64,
        "nobody": sandbox().NOBODY, "root": sandbox().ROOT, "skip": skip, "devices": devices, "args": args,
        # no new process or thread from the lock on; a Hugging Face model is loaded (by transformers'
        # thread pool, from its config) first, its child forbids them once it is loaded
        "nproc": fmt != "huggingface", "data_limit": gpu,
    })


def open_child(data: bytes, fmt: str, settings: str, workdir: str) -> Channel:
    """A child started on ``data`` (the graph's bytes) with ``settings``: forked from the zygote for its
    format's preload when zygotes are on and it runs, else a fresh interpreter in ``workdir``."""
    box = sandbox()
    program = box.PRELUDE + SERVE_CODE
    preload = HF_PRELOAD if fmt == "huggingface" else MODEL_PRELOAD
    frame = [(0).to_bytes(8, "little"), len(data).to_bytes(8, "little"), data]
    child = box.fork_from_zygote(preload) if config.sandbox_zygote() else None
    if child is not None:
        header = json.dumps({"code": program, "argv1": settings}).encode()
        sock = child._sock
        try:
            sock.sendall(len(header).to_bytes(8, "little") + header + b"".join(frame))
        except OSError:
            pass
        exit_holder: dict[str, int] = {}

        def exit_code() -> int | None:
            return exit_holder.get("code")

        def kill() -> None:
            child.kill()

        def close() -> None:  # the stderr reader closes its own end
            for stream in (child.reports, sock):
                try:
                    stream.close()
                except OSError:
                    pass

        channel = Channel(child.pid, sock, child.reports, child.errors, kill, exit_code, close, sock)
        channel.exit_holder = exit_holder  # the zygote's {"exit": code} line fills it
        return channel
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", box.PRELUDE + preload + SERVE_CODE, settings],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=box.child_env(workdir), cwd=workdir, start_new_session=True, close_fds=True,
    )
    try:
        proc.stdin.write(b"".join(frame))
        proc.stdin.flush()
    except OSError:
        pass

    def kill_fresh() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close_fresh() -> None:
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def exit_fresh() -> int | None:
        try:
            return proc.wait(2)
        except subprocess.TimeoutExpired:
            return None

    return Channel(proc.pid, proc.stdin, proc.stdout, proc.stderr, kill_fresh, exit_fresh, close_fresh, None)


_PRESTARTED = False
_PRESTART_LOCK = threading.Lock()


def prestart() -> None:
    """Start the model processes' zygote in the background (a person is about to upload a model), so the
    first upload does not wait for its imports; no-op when it runs already or zygotes are off."""
    global _PRESTARTED
    with _PRESTART_LOCK:
        if _PRESTARTED or not config.sandbox_zygote():
            return
        _PRESTARTED = True

    def start() -> None:
        child = sandbox().fork_from_zygote(MODEL_PRELOAD)  # waits for its preload
        if child is not None:
            child.kill()
            child.close()

    threading.Thread(target=start, name="glassbox-zygote-prestart", daemon=True).start()
