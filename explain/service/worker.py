"""The queue's workers: claim jobs (`explain.workspace.jobs`), run them (`explain.service.runners`)
and save each result as a run, whole, under the job's id.

``python -m explain worker [--workers N]`` runs a `WorkerPool` of N threads in its own process (one
process per GPU); the app and ``serve`` start one in threads unless ``GLASSBOX_EXTERNAL_WORKER=1``
(N: ``--workers``, else ``GLASSBOX_WORKERS``, else `explain.config.default_workers`). The threads
share the process's model cache; a job holds its models' locks while it runs
(`explain.service.model_locks`), so two jobs never interleave hooked work on one model.

Interactive before batch: a worker claims interactive jobs first (`Jobs.order`), and a running
batch job, between two of its chunks (`JobContext.between_chunks`: a dataset job's shards, an
explanation's methods), lets go of its models, runs the interactive jobs waiting (on this thread,
claimed like any other) and lets the threads waiting for its models go first, then goes on where it
stopped: nothing is computed again and its result is the one an uninterrupted run gives. A batch
job that holds its models shared (it hooks nothing: `runners.job_shares_models`; a text model's
embedding hook acts in the engine's own passes only) also pauses inside a method, at the progress
report after each engine chunk (looking at the queue at most every `INTERACTIVE_LOOK_S`), for the
waiting interactive jobs that hook nothing.

While a job runs, a heartbeat thread tells the queue the worker is alive. A pool's recovery thread
(and every worker between jobs) takes back the jobs of workers that stopped answering
(`Jobs.recover`), and those of workers of this host whose process is gone at once (`worker_gone`);
the app, ``serve`` and ``worker`` call `recover_now` as they start, so a job a killed server left
"running" is queued again, and run, before anyone asks.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from explain.config import default_workers, job_heartbeat_s, job_max_attempts, job_stale_s
from explain.errors import Cancelled, one_line
from explain.service.model_locks import MODEL_LOCKS, Holding, ModelLocks
from explain.service.models import ModelCache
from explain.service.runners import RUNNERS, JobContext, job_shares_models
from explain.workspace import Workspace
from explain.workspace.jobs import JobInfo, LostJob

log = logging.getLogger("glassbox.worker")

#: how often, at most, a batch job that may pause inside a method looks for queued interactive work
#: (at its engine chunks' progress reports; one query of the queue each time)
INTERACTIVE_LOOK_S = 0.05


def _pid_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (a zombie, killed but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux), or it just ended
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _name_pattern(host: str) -> re.Pattern:
    """The names this module gives workers of ``host``: ``host:PID:THREAD``, ``host:PID:embedded[I]``,
    ``host:PID:cli`` (`explain.service.client.run_here`) and ``host:gpuN:PID[:I]`` (``worker --gpu N``;
    ``I``: the thread's number in a pool of several)."""
    return re.compile(rf"^{re.escape(host)}:(?:(?P<pid>\d+):(?:\d+|embedded\d*|cli)|gpu\d+:(?P<gpu_pid>\d+)(?::\d+)?)$")


def worker_gone(name: str) -> bool:
    """True when ``name`` is a worker of this host (as this module names them) whose process no
    longer exists: its jobs can go back to the queue at once, without waiting for a stale heartbeat.
    A name given with ``worker --name``, or another host's worker, is never judged here (False):
    their jobs wait for ``GLASSBOX_JOB_STALE_S``."""
    found = _name_pattern(socket.gethostname()).match(name or "")
    if found is None:
        return False
    return _pid_gone(int(found["pid"] or found["gpu_pid"]))


def recover_now(ws: Workspace) -> list[JobInfo]:
    """What a server or a worker does as it starts, before any page or request: jobs left "running"
    by a worker of this host that no longer exists (a SIGKILLed server or worker) go back to the
    queue at once, and so do jobs whose heartbeat is stale (`recover_jobs`); the stored files a
    killed save left without their row are removed (`Workspace.sweep_blobs`)."""
    back = recover_jobs(ws)
    start_sweep(ws)
    return back


_SWEEPING = threading.Lock()  # one sweep of this process at a time (the API's start asks twice)


def start_sweep(ws: Workspace) -> threading.Thread:
    """`Workspace.sweep_blobs` in a daemon thread (``glassbox-blob-sweep``): a start does not wait for it
    (~17 us a stored file listed, 2-core shared CPU); a sweep already running in this process is enough."""
    def sweep() -> None:
        if not _SWEEPING.acquire(blocking=False):
            return
        try:
            swept = ws.sweep_blobs()
            if swept:
                log.info("removed %d stored files no row names", len(swept))
        except Exception as exc:  # noqa: BLE001 - a blob folder it may not change: nothing else depends on it
            log.warning("Sweeping the stored files no row names failed: %s", one_line(exc))
        finally:
            _SWEEPING.release()

    thread = threading.Thread(target=sweep, name="glassbox-blob-sweep", daemon=True)
    thread.start()
    return thread


def recover_jobs(ws: Workspace) -> list[JobInfo]:
    """Jobs whose worker is gone or silent back to the queue (`Jobs.recover`): at start and every
    `recovery_interval_s` while a pool runs."""
    back = ws.jobs.recover(job_stale_s(), job_max_attempts(), gone=worker_gone)
    for job in back:
        log.info("recovered job %s: %s", job.id, job.status)
    return back


class Worker:
    """One worker thread's loop. ``stop``: shared by a pool's workers; ``locks``: the process's
    model locks (`MODEL_LOCKS`; a test passes its own). ``serves_queue``: between a batch job's
    chunks, run the queued interactive jobs here (a pool's workers); False for a CLI that runs only
    its own job (`explain.service.client.run_here`), which then only lets waiting threads go first."""

    def __init__(self, ws: Workspace, name: str | None = None, poll_s: float = 0.5,
                 stop: threading.Event | None = None, locks: ModelLocks = MODEL_LOCKS, serves_queue: bool = False):
        self.ws = ws
        self.serves_queue = serves_queue
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"
        self.poll_s = poll_s
        self.models = ModelCache(ws)
        self.locks = locks
        self.stop = stop or threading.Event()
        self.wake = threading.Event()  # set by `Jobs.on_submit` in this process: no wait for the next poll
        self._recovered_at = float("-inf")

    def recover(self) -> list[JobInfo]:
        """Take back the jobs of workers that stopped answering (at most every few seconds)."""
        now = time.monotonic()
        if now - self._recovered_at < recovery_interval_s():
            return []
        self._recovered_at = now
        return recover_jobs(self.ws)

    def run_forever(self) -> int:
        """Run jobs until `stop` is set; the number run."""
        ran = 0
        while not self.stop.is_set():
            try:
                if self.run_once():
                    ran += 1
                    continue
            except Exception:  # a database hiccup: log it, keep serving
                log.exception("worker %s: claiming a job failed", self.name)
            self.wake.wait(self.poll_s)
            self.wake.clear()
        return ran

    def run_once(self) -> JobInfo | None:
        """Take back stale jobs, then claim and run the next job; the finished job, or None if idle."""
        self.recover()
        job = self.ws.jobs.claim(self.name, tuple(RUNNERS))
        if job is None:
            return None
        self.run_job(job)
        return self.ws.jobs.get_unchecked(job.id)

    def run_waiting_interactive(self, only_sharing: bool = False) -> int:
        """Claim and run, here, the interactive jobs queued now (a batch job's pause; ``only_sharing``:
        only those that share their models, `job_shares_models`); how many ran."""
        ran = 0
        while True:
            for queued in self.ws.jobs.queued("interactive", tuple(RUNNERS)):
                if only_sharing and not job_shares_models(queued):
                    continue
                job = self.ws.jobs.claim(self.name, only=queued.id)
                if job is not None:
                    break
            else:
                return ran
            log.info("worker %s: running interactive job %s between a batch job's chunks", self.name, job.id)
            self.run_job(job)
            ran += 1

    def run_job(self, job: JobInfo) -> None:
        jobs, me = self.ws.jobs, self.name
        state = {"fraction": 0.0, "sent": 0.0, "looked": 0.0, "cancel": False, "lost": False}
        done = threading.Event()
        holding = Holding(self.locks, shares=job_shares_models(job))

        def beat() -> None:  # the heartbeat, also while a chunk runs between progress reports
            while not done.wait(job_heartbeat_s()):
                try:
                    state["cancel"] = jobs.heartbeat(job.id, me, state["fraction"]) or state["cancel"]
                except LostJob:
                    state["lost"] = True
                    return
                except Exception:
                    log.exception("worker %s: heartbeat failed", me)

        def check(force: bool = False) -> bool:  # write how far (at most 4/s unless forced); raise on cancel
            now, looked = time.monotonic(), False
            if force or now - state["sent"] > 0.25:
                state["sent"], looked = now, True
                try:
                    state["cancel"] = jobs.heartbeat(job.id, me, state["fraction"]) or state["cancel"]
                except LostJob:
                    state["lost"] = True
            if state["cancel"] or state["lost"] or job.id in jobs.cancel_asked:  # asked here: no wait
                raise Cancelled("The job was cancelled.")
            return looked

        def progress(done_n: int, total: int) -> None:
            first = state["fraction"] == 0.0  # the first step forward is written at once
            state["fraction"] = done_n / total if total else 0.0
            check(force=first and state["fraction"] > 0)
            now = time.monotonic()  # every engine chunk, not the heartbeat's 4/s: waiting work waits for one chunk
            if pausable_mid_chunk() and now - state["looked"] >= INTERACTIVE_LOOK_S:
                state["looked"] = now
                pause_for_interactive(only_sharing=True)

        def pausable_mid_chunk() -> bool:  # a batch job that hooks nothing may pause inside its method
            return job.priority == "batch" and self.serves_queue and holding.pausable_in_method

        def pause_for_interactive(only_sharing: bool = False) -> None:
            if not jobs.has_queued("interactive", tuple(RUNNERS)):
                return
            jobs.note(job.id, me, "paused between chunks: interactive work runs first")
            try:
                holding.pause(lambda: self.run_waiting_interactive(only_sharing))
            finally:
                jobs.note(job.id, me, None)

        def between_chunks() -> None:  # a batch job's safe point: no hook on any model here
            check(force=True)  # a cancel takes effect at the chunk boundary, whatever the rate limit
            if job.priority == "batch":
                if self.serves_queue and jobs.has_queued("interactive", tuple(RUNNERS)):
                    pause_for_interactive()
                elif holding.wanted:
                    holding.pause()
                check(force=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            if jobs.heartbeat(job.id, me):  # cancelled between claim and start
                raise Cancelled("The job was cancelled.")

            def publish(arrays) -> None:
                try:
                    jobs.publish_partial(job.id, me, arrays, state["fraction"])
                except LostJob:
                    state["lost"] = True
                    raise Cancelled("The job was taken back from this worker.") from None

            ctx = JobContext(self.ws, job, jobs.inputs(job), progress, self.models, publish,
                             hold=holding.take, between_chunks=between_chunks)
            record = RUNNERS[job.kind](ctx)
            if state["lost"]:
                return
            run = self.ws.runs.save(job.owner_actor, record, run_id=job.id)
            jobs.finish(job.id, me, run.id)
        except Cancelled:
            jobs.mark_cancelled(job.id, me)
        except Exception as exc:  # the job fails with its reason; the worker goes on
            log.info("worker %s: job %s failed: %s", me, job.id, one_line(exc))
            jobs.fail(job.id, me, one_line(exc))
        finally:
            holding.release_all()
            done.set()
            thread.join(timeout=5)


def recovery_interval_s() -> float:
    """How often a worker or a pool takes back the jobs of stopped workers."""
    return min(5.0, job_stale_s() / 4)


class WorkerPool:
    """``n`` workers in threads of this process (names: ``name`` for one, ``name`` + its number for
    several), one shared stop, and a recovery thread that takes back stopped workers' jobs every
    `recovery_interval_s` even while every worker is busy."""

    def __init__(self, ws: Workspace, n: int | None = None, name: str | None = None, poll_s: float = 0.5,
                 numbered: str = "{name}:{i}"):
        self.ws = ws
        self.n = max(1, int(n or default_workers()))
        self.stop = threading.Event()
        base = name or f"{socket.gethostname()}:{os.getpid()}"
        names = [name or f"{base}:{threading.get_ident() % 100000}"] if self.n == 1 else [
            numbered.format(name=base, i=i) for i in range(self.n)]
        self.workers = [Worker(ws, name=n_, poll_s=poll_s, stop=self.stop, serves_queue=True) for n_ in names]
        self.threads: list[threading.Thread] = []
        self.ran = [0] * self.n  # jobs each worker ran since `start`

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def _recover_forever(self) -> None:
        while not self.stop.wait(recovery_interval_s()):
            try:
                recover_jobs(self.ws)
            except Exception:
                log.exception("taking back stopped workers' jobs failed")

    def start(self) -> WorkerPool:
        """The workers' threads and the recovery thread, as daemons."""
        def run(i: int) -> None:
            self.ran[i] = self.workers[i].run_forever()

        self.threads = [threading.Thread(target=run, args=(i,), name=f"glassbox-worker-{i}", daemon=True)
                        for i in range(self.n)]
        self.threads.append(threading.Thread(target=self._recover_forever, name="glassbox-recovery", daemon=True))
        for t in self.threads:
            t.start()
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads[:-1])

    def run_until_empty(self) -> int:
        """Every worker runs jobs until none is queued (``worker --once``); the number run."""
        counts = [0] * self.n

        def drain(i: int) -> None:
            while self.workers[i].run_once() is not None:
                counts[i] += 1

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts)

    def shutdown(self, timeout_s: float = 30) -> None:
        self.stop.set()
        self.wake()
        for t in self.threads:
            t.join(timeout=timeout_s)


_EMBEDDED: dict[str, WorkerPool] = {}
_EMBEDDED_LOCK = threading.Lock()


def start_embedded(ws: Workspace, workers: int | None = None) -> WorkerPool:
    """One pool of worker threads per workspace in this process (the app's and the API's own):
    ``workers`` threads (default ``GLASSBOX_WORKERS``, else `default_workers`)."""
    with _EMBEDDED_LOCK:
        key = f"{ws.url}|{ws.home}"
        found = _EMBEDDED.get(key)
        if found is not None and found.alive():
            return found
        recover_now(ws)  # before the first claim: a killed server's jobs are queued again, then run
        pool = WorkerPool(ws, workers, name=f"{socket.gethostname()}:{os.getpid()}:embedded", numbered="{name}{i}")
        ws.jobs.on_submit.append(pool.wake)
        _EMBEDDED[key] = pool.start()
        return pool


def stop_embedded(ws: Workspace) -> None:
    with _EMBEDDED_LOCK:
        found = _EMBEDDED.pop(f"{ws.url}|{ws.home}", None)
    if found is not None:
        if found.wake in ws.jobs.on_submit:
            ws.jobs.on_submit.remove(found.wake)
        found.shutdown()
