"""The job queue: long work (attributions, dataset-wide runs) as rows of the ``jobs`` table.

    job = ws.jobs.submit(actor, "explain", params, inputs={"inputs": x}, priority="interactive")
    claimed = ws.jobs.claim("worker-1")          # a worker (`explain.service.worker`) takes the next one
    ws.jobs.finish(claimed.id, "worker-1", run_id)

The queue lives in the workspace database, so it works wherever the workspace does (SQLite
by default, PostgreSQL when configured) and is as durable as the runs it produces.

Order: interactive jobs before batch jobs (a job's class: `job_priority`, one rule of kind and
rows); within a class, round-robin over owners (the owner whose last job started longest ago goes
first), then oldest first. A claim is one conditional
``UPDATE ... WHERE id = :id AND status = 'queued'``: of two workers racing for a row exactly
one changes it (SQLite serialises writers with ``BEGIN IMMEDIATE``; PostgreSQL re-checks the
WHERE clause after the first writer commits), the loser tries the next candidate.

A running job's worker updates its ``heartbeat``; `recover` puts a job whose heartbeat is older
than ``stale_s`` (or whose worker is known to be gone: a process of this host that no longer
exists) back in the queue (``attempts`` counts tries) or marks it failed with the reason after
``max_attempts``, so a job whose worker was killed is never left "running". The job's
result is saved as a run under the job's id (`explain.workspace.runs.Runs.save`), whole or not
at all, so a retried job never leaves half a result or two.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from explain.errors import GlassboxError, NotFound, PermissionDenied, QueueFull, UsageError
from explain.workspace.core import Core, new_id
from explain.workspace.roles import Action, Actor, allows
from explain.workspace.schema import Job, utcnow

PRIORITIES = ("interactive", "batch")
#: kinds that are never interactive: a whole dataset is batch work however it is asked for
BATCH_KINDS = ("dataset",)
#: the most input rows an interactive job may have; a larger one is batch work
INTERACTIVE_ROWS = 32
STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")


class LostJob(GlassboxError):
    """The worker no longer holds this job (it was recovered as stale and handed to another)."""


@dataclass(frozen=True)
class JobInfo:
    id: str
    kind: str
    title: str
    owner: str
    owner_is_token: bool
    owner_is_operator: bool
    priority: str
    status: str
    progress: float
    params: dict[str, Any]
    run: str | None
    error: str | None
    cancel_requested: bool
    worker: str | None
    attempts: int
    created: str
    started: str | None
    finished: str | None
    inputs_sha256: str | None
    partial_sha256: str | None = None  # a running job's result so far (`Jobs.partial`)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def owner_actor(self) -> Actor:
        """Who the job acts as when it saves its run (its role is checked again then)."""
        return Actor(self.owner, token=self.owner_is_token, operator=self.owner_is_operator)


def owner_key(job: JobInfo) -> tuple[str, bool, bool]:
    """The submitting actor of a job as a key: name, token flag, operator flag."""
    return job.owner, job.owner_is_token, job.owner_is_operator


def job_priority(kind: str, rows: int, asked: str = "interactive") -> str:
    """The one rule of a job's class: ``asked`` (a caller may always ask for batch), except that a
    dataset job (`BATCH_KINDS`) or a job of more than `INTERACTIVE_ROWS` input rows is batch work.
    ``rows``: its inputs' rows (0 when it has none)."""
    if asked not in PRIORITIES:
        raise UsageError(f"Unknown priority {asked!r}.", f"Choose one of {', '.join(PRIORITIES)}.")
    return "batch" if kind in BATCH_KINDS or rows > INTERACTIVE_ROWS else asked


def _info(row: Job) -> JobInfo:
    return JobInfo(row.id, row.kind, row.title, row.owner, bool(row.owner_is_token),
                   bool(row.owner_is_operator), row.priority, row.status,
                   float(row.progress or 0.0), dict(row.params or {}), row.run_id, row.error,
                   bool(row.cancel_requested), row.worker, int(row.attempts or 0), _stamp(row.created_at),
                   _stamp(row.started_at), _stamp(row.finished_at), row.inputs_sha256,
                   row.partial_sha256)


def _aware(when: datetime | None) -> datetime | None:
    """A UTC datetime (SQLite hands them back without their zone: they are UTC)."""
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _stamp(when: datetime | None) -> str | None:
    """ISO 8601 in UTC to the microsecond: the queue orders by these strings."""
    when = _aware(when)
    return when.isoformat(timespec="microseconds") if when is not None else None


class Jobs:
    def __init__(self, core: Core):
        self.core = core
        #: called after each submit commits: an in-process worker wakes at once instead of at its next poll
        self.on_submit: list = []
        #: notified when a job of this process's workers ends: in-process waiters answer at once
        self.ended = threading.Condition()
        #: running jobs whose cancel was asked in this process: its workers stop at the next chunk
        #: without waiting for their next look at the row (other processes' cancels: at that look)
        self.cancel_asked: set[str] = set()

    # -- asking ------------------------------------------------------------------------------
    def submit(self, actor: Actor, kind: str, params: dict[str, Any], *, title: str = "",
               inputs: dict[str, np.ndarray] | None = None, priority: str = "batch",
               max_active: int | None = None) -> JobInfo:
        """Queue a job. Its result is a saved run, so submitting needs the right to save runs.
        Callers go through `explain.service.client.submit` (the kind's runner and the one
        per-caller limit, ``GLASSBOX_MAX_JOBS``); only tests call this directly. Its class is
        `job_priority` of its kind, its ``inputs["inputs"]`` rows and ``priority``.

        Raises:
            QueueFull: ``actor`` already has ``max_active`` queued or running jobs.
        """
        rows = len(inputs["inputs"]) if inputs and "inputs" in inputs else 0
        priority = job_priority(kind, rows, priority)
        with self.core.db.transaction() as s:  # refuse before writing any blob
            self.core.require(s, actor, Action.SAVE_RUN)
        inputs_sha = self.core.blobs.put_arrays(inputs) if inputs else None
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.SAVE_RUN)
            if max_active is not None:
                # the submitting actor whole (name, token, operator), as `cancel` compares: a token named like
                # a user, or an account named as the operator's tools, has a count of its own
                active = s.scalar(select(func.count()).select_from(Job)
                                  .where(Job.owner == actor.name, Job.owner_is_token == actor.token,
                                         Job.owner_is_operator == actor.operator, Job.status.in_(ACTIVE)))
                if active >= max_active:
                    raise QueueFull(f"{actor.name} already has {active} jobs queued or running "
                                    f"(the limit is {max_active}).", "Wait for one to finish.")
            row = Job(id=new_id(), kind=kind, title=(title or kind)[:500], owner=actor.name,
                      owner_is_token=actor.token, owner_is_operator=actor.operator, priority=priority, status="queued", progress=0.0,
                      params=params, inputs_sha256=inputs_sha, cancel_requested=False, attempts=0)
            s.add(row)
            s.flush()
            self.core.audit(s, actor, "job.submit", "job", row.id, after={"kind": kind, "priority": priority})
            info = _info(row)
        for listener in list(self.on_submit):
            listener()
        return info

    def _row(self, s, job_id: str) -> Job:
        row = s.get(Job, str(job_id)[:32])
        if row is None:
            raise NotFound(f"No job {str(job_id)[:40]!r}.")
        return row

    def get(self, actor: Actor, job_id: str) -> JobInfo:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            return _info(self._row(s, job_id))

    def get_unchecked(self, job_id: str) -> JobInfo:
        """`get` for the server's own worker and waiters (no role: they act for the queue)."""
        with self.core.db.transaction() as s:
            return _info(self._row(s, job_id))

    def list(self, actor: Actor, limit: int = 100, active_only: bool = False) -> list[JobInfo]:
        """Jobs, active ones first (in the order they will run), then the newest finished."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ)
            active = [_info(r) for r in s.scalars(select(Job).where(Job.status.in_(ACTIVE)))]
            done = [] if active_only else [
                _info(r) for r in s.scalars(select(Job).where(Job.status.not_in(ACTIVE))
                                            .order_by(Job.finished_at.desc(), Job.id).limit(limit))]
        running = sorted((j for j in active if j.status == "running"), key=lambda j: j.started or "")
        queued = [j for j in active if j.status == "queued"]
        return (running + self.order(queued, self._last_starts(queued)) + done)[:limit]

    def cancel(self, actor: Actor, job_id: str) -> JobInfo:
        """Cancel a queued job at once; ask a running one to stop (its worker stops at the next
        progress report). The owner or an admin may; a finished job stays as it is."""
        with self.core.db.transaction() as s:
            role = self.core.require(s, actor, Action.READ)
            row = self._row(s, job_id)
            # name, token and operator flags all (`owner_actor`): an account may be named as a token or as `cli:<login>`
            owner = _info(row).owner_actor == actor
            if not owner and not allows(role, Action.MANAGE_USERS):
                raise PermissionDenied(f"{actor.name} may not cancel {row.owner}'s job.",
                                       "Only its owner or an admin may.")
            if row.status == "queued":
                row.status, row.finished_at, row.error = "cancelled", utcnow(), f"cancelled by {actor.name}"
            elif row.status == "running":
                row.cancel_requested = True
                self.cancel_asked.add(row.id)
            else:
                return _info(row)
            self.core.audit(s, actor, "job.cancel", "job", row.id, before={"status": "queued" if row.status ==
                                                                            "cancelled" else "running"})
            s.flush()
            info = _info(row)
        with self.ended:
            self.ended.notify_all()
        return info

    def inputs(self, job: JobInfo) -> dict[str, np.ndarray]:
        """The arrays submitted with the job (empty if none)."""
        return self.core.blobs.get_arrays(job.inputs_sha256) if job.inputs_sha256 else {}

    # -- the order ------------------------------------------------------------------------------
    def _last_starts(self, queued: list[JobInfo], s=None) -> dict[tuple[str, bool, bool], str]:
        owners = {j.owner for j in queued}
        if not owners:
            return {}

        def query(sess):
            rows = sess.execute(select(Job.owner, Job.owner_is_token, Job.owner_is_operator, func.max(Job.started_at))
                                .where(Job.owner.in_(owners))
                                .group_by(Job.owner, Job.owner_is_token, Job.owner_is_operator)).all()
            return {(owner, bool(token), bool(operator)): _stamp(when) or ""
                    for owner, token, operator, when in rows}

        if s is not None:
            return query(s)
        with self.core.db.transaction() as sess:
            return query(sess)

    @staticmethod
    def order(queued: list[JobInfo], last_start: dict[tuple[str, bool, bool], str]) -> list[JobInfo]:
        """Queued jobs in the order workers take them: interactive first; within a class one job
        per owner in turn, the owner served longest ago (or never) first; each owner's oldest first.
        An owner is the whole submitting actor (`owner_key`): a token or the operator's tools named like a
        user take turns of their own, as the per-caller limit and `cancel` count them."""
        out: list[JobInfo] = []
        for priority in PRIORITIES:
            per_owner: dict[tuple[str, bool, bool], list[JobInfo]] = {}
            for job in sorted((j for j in queued if j.priority == priority), key=lambda j: (j.created, j.id)):
                per_owner.setdefault(owner_key(job), []).append(job)
            turn = sorted(per_owner, key=lambda o: (last_start.get(o) or "", per_owner[o][0].created, o))
            while per_owner:
                for owner in list(turn):
                    out.append(per_owner[owner].pop(0))
                    if not per_owner[owner]:
                        del per_owner[owner]
                        turn.remove(owner)
        return out

    # -- working (the worker runs as the server: no actor) --------------------------------------
    def claim(self, worker: str, kinds: tuple[str, ...] | None = None, only: str | None = None,
              priority: str | None = None) -> JobInfo | None:
        """Take the next queued job (of ``kinds`` if given; the job ``only`` if given: a CLI runs its
        own job; of class ``priority`` if given: a batch job's pause) for ``worker``: None when none
        is queued."""
        with self.core.db.transaction() as s:
            query = select(Job).where(Job.status == "queued")
            if kinds is not None:
                query = query.where(Job.kind.in_(kinds))
            if only is not None:
                query = query.where(Job.id == only)
            if priority is not None:
                query = query.where(Job.priority == priority)
            queued = [_info(r) for r in s.scalars(query)]
            for job in self.order(queued, self._last_starts(queued, s)):
                now = utcnow()
                claimed = s.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
                    status="running", worker=worker, heartbeat=now, started_at=now, progress=0.0,
                    attempts=Job.attempts + 1).execution_options(synchronize_session=False)).rowcount
                if claimed == 1:
                    return _info(s.get(Job, job.id, populate_existing=True))
        return None

    def queued(self, priority: str, kinds: tuple[str, ...] | None = None) -> list[JobInfo]:
        """The queued jobs of class ``priority`` (and of ``kinds`` if given) in the order workers take them."""
        query = select(Job).where(Job.status == "queued", Job.priority == priority)
        if kinds is not None:
            query = query.where(Job.kind.in_(kinds))
        with self.core.db.transaction() as s:
            found = [_info(r) for r in s.scalars(query)]
            return self.order(found, self._last_starts(found, s))

    def has_queued(self, priority: str, kinds: tuple[str, ...] | None = None) -> bool:
        """True when a job of class ``priority`` (and of ``kinds`` if given) is queued: what a batch
        job asks between two chunks."""
        query = select(Job.id).where(Job.status == "queued", Job.priority == priority)
        if kinds is not None:
            query = query.where(Job.kind.in_(kinds))
        with self.core.db.transaction() as s:
            return s.scalar(query.limit(1)) is not None

    def heartbeat(self, job_id: str, worker: str, progress: float | None = None) -> bool:
        """Record that ``worker`` still runs the job (and how far); True if cancelling was asked.

        Raises:
            LostJob: the job is no longer this worker's (recovered as stale, or finished).
        """
        values: dict[str, Any] = {"heartbeat": utcnow()}
        if progress is not None:
            values["progress"] = float(min(max(progress, 0.0), 1.0))
        with self.core.db.transaction() as s:
            changed = s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                                .values(**values).execution_options(synchronize_session=False)).rowcount
            if changed != 1:
                raise LostJob(f"Job {job_id} is no longer run by {worker}.")
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def note(self, job_id: str, worker: str, text: str | None) -> None:
        """Say (``text``; None: nothing) why the running job stands still, on the Queue page's "note"
        (a batch job paused for interactive work). Silent when the job is no longer ``worker``'s."""
        with self.core.db.transaction() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                      .values(error=text).execution_options(synchronize_session=False))

    def publish_partial(self, job_id: str, worker: str, arrays: dict[str, np.ndarray],
                        progress: float | None = None) -> None:
        """Store ``arrays`` as the running job's result so far (e.g. a dataset summary after each
        shard), with how far the job is at that point.

        Raises:
            LostJob: the job is no longer this worker's.
        """
        sha = self.core.blobs.put_arrays(arrays)
        with self.core.db.transaction() as s:
            changed = s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                                .values(partial_sha256=sha, heartbeat=utcnow(),
                                        **({} if progress is None else {"progress": float(min(max(progress, 0.0), 1.0))}))
                                .execution_options(synchronize_session=False)).rowcount
            if changed != 1:
                raise LostJob(f"Job {job_id} is no longer run by {worker}.")

    def partial(self, job: JobInfo) -> dict[str, np.ndarray] | None:
        """The result so far that the job's worker published last (None if none), for a caller
        who just read ``job`` (so may see it)."""
        return self.core.blobs.get_arrays(job.partial_sha256) if job.partial_sha256 else None

    def _end(self, job_id: str, worker: str, **values: Any) -> bool:
        with self.core.db.transaction() as s:
            ended = s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                              .values(finished_at=utcnow(), **values)
                              .execution_options(synchronize_session=False)).rowcount == 1
        self.cancel_asked.discard(job_id)
        with self.ended:
            self.ended.notify_all()
        return ended

    def wait_for_an_end(self, timeout_s: float) -> None:
        """Sleep until a job run in this process ends, or ``timeout_s`` (jobs run elsewhere: the timeout)."""
        with self.ended:
            self.ended.wait(timeout_s)

    def finish(self, job_id: str, worker: str, run_id: str) -> bool:
        return self._end(job_id, worker, status="done", progress=1.0, run_id=run_id, error=None)

    def fail(self, job_id: str, worker: str, error: str) -> bool:
        return self._end(job_id, worker, status="failed", error=error[:2000])

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        return self._end(job_id, worker, status="cancelled", error="cancelled while running")

    def recover(self, stale_s: float, max_attempts: int,
                gone: Callable[[str], bool] | None = None) -> list[JobInfo]:
        """Running jobs whose heartbeat is older than ``stale_s`` seconds (their worker died), and
        those whose worker ``gone(worker)`` says is no longer running whatever their heartbeat (a
        process of this host that no longer exists, `explain.service.worker.worker_gone`): back to
        the queue, or failed with the reason once they have had ``max_attempts`` tries."""
        cutoff = utcnow() - timedelta(seconds=stale_s)
        out = []
        with self.core.db.transaction() as s:
            rows = list(s.scalars(select(Job).where(Job.status == "running")))
            for row in rows:
                beat = _aware(row.heartbeat)
                if beat is not None and beat >= cutoff and not (gone is not None and row.worker and gone(row.worker)):
                    continue
                if row.cancel_requested:
                    values = {"status": "cancelled", "finished_at": utcnow(), "error": "cancelled; its worker stopped"}
                elif row.attempts >= max_attempts:
                    values = {"status": "failed", "finished_at": utcnow(),
                              "error": f"its worker stopped answering during each of {row.attempts} attempts "
                                       f"(killed or out of memory); gave up"}
                else:
                    values = {"status": "queued", "worker": None, "progress": 0.0,
                              "error": f"attempt {row.attempts} lost its worker; queued again"}
                changed = s.execute(update(Job).where(Job.id == row.id, Job.status == "running",
                                                      Job.attempts == row.attempts)
                                    .values(**values).execution_options(synchronize_session=False)).rowcount
                if changed == 1:
                    out.append(_info(s.get(Job, row.id, populate_existing=True)))
        return out
