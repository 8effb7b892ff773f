"""Dynamic batching: concurrent requests for the same work run as one engine batch, each answered
with its own rows (the way Triton's ``max_queue_delay`` and Ray Serve's ``@serve.batch`` do it).

    batcher = Batcher(max_rows=64, max_delay_s=0.005)
    probs = batcher.run(key, x, model.predict_proba)         # in a thread: x [n, ...] -> this caller's rows [n, K]
    probs = await batcher.arun(key, x, model.predict_proba)  # in the event loop: the same, waiting there

Callers with the same ``key`` (a model version, and for an attribution its method and parameters)
join one *group*; the first of them leads it. The leader waits while the group gathers, and runs
``fn`` once on every member's rows concatenated, when

- the group holds ``max_rows`` rows (a request that would overflow it opens the next group), or
- ``max_delay_s`` has passed since the group opened and its key is free (while the key's batch runs,
  its group would wait anyway: it takes every request that comes until that batch ends or it is full,
  as Triton's scheduler batches what queued while the model was busy), or
- nobody joined for ``quiet_s``, or for as long as the key's last batch took to compute if that is
  shorter (a request alone waits that short window, not the whole delay; a fast model waits no
  longer for company than it takes to serve it); a request whose key's last batch served one
  request and saw no other request in the ``max_delay_s`` before it (one client calling in turn)
  does not wait at all,

and no other group of the same key is running: one engine batch per key at a time, so requests that
come while one runs gather into the next (under load the batches grow by themselves). Each member
gets exactly its rows of the result. When the batch fails, every member's rows run again on their
own, so a request that breaks the model fails alone and its neighbours get their answers.

`arun` is `run` for a caller in an event loop (the API's ``:predict`` and ``:explain``): the request waits there, on a
future of its own, and one worker thread per *batch* (not one per request, issue 23) waits for company
and runs ``fn``. That thread is started by a task of its own, so a request cancelled while it waits (its
client gone) leaves its group's batch running for the others. Callers of
`run` and of `arun` of one key share its groups.

Nothing here knows about HTTP, models or torch: ``fn`` is any function from rows ``[n, ...]`` to
results ``[n, ...]`` (a row's result depends on that row only).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

import anyio
import numpy as np

#: how long a request with no company waits for some before it runs (seconds)
QUIET_S = 0.0005

Rows = np.ndarray  # [n, ...]
BatchFn = Callable[[Rows], Rows]


class _Group:
    """The requests of one engine batch: their rows, then each one's result or error."""

    def __init__(self, now: float):
        self.opened = now
        self.last_join = now
        self.parts: list[Rows] = []
        self.rows = 0
        self.results: list[Rows | None] = []
        self.errors: list[BaseException | None] = []
        self.done = threading.Event()
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []  # `arun`'s members

    def add(self, rows: Rows, now: float) -> int:
        self.parts.append(rows)
        self.rows += len(rows)
        self.last_join = now
        return len(self.parts) - 1

    def answer(self, index: int) -> Rows:
        """Member ``index``'s result rows, or its error raised."""
        error = self.errors[index]
        if error is not None:
            raise error
        return self.results[index]

    def finish(self) -> None:
        """Every member told: `run`'s through ``done``, `arun`'s through their futures, in their loops
        (one call into each loop)."""
        self.done.set()
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        for loop, future in self.futures:
            loops.setdefault(loop, []).append(future)
        for loop, futures in loops.items():
            _in_loop(loop, _settle, futures)


def _settle(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():  # not cancelled meanwhile (its request gone)
            future.set_result(None)


def _in_loop(loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> None:
    """``fn(*args)`` in ``loop``'s thread: now if this is it, else soon."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if loop is here:
        fn(*args)
    elif not loop.is_closed():  # closed: nobody there waits any more (a test client's loop of one request)
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed meanwhile
            pass


class Batcher:
    """Gathers concurrent `run` calls with the same key into one call of their function.

    Args:
        max_rows: the most rows one batch holds (a request with more runs on its own).
        max_delay_s: the longest a group waits for company after it opened; 0 turns batching off.
        quiet_s: a group whose key is idle runs once nobody joined it for this long.
    """

    def __init__(self, max_rows: int, max_delay_s: float, quiet_s: float = QUIET_S):
        self.max_rows = max(1, int(max_rows))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.quiet_s = min(max(0.0, float(quiet_s)), self.max_delay_s)
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Group] = {}  # key -> the group still taking requests
        self._busy: set[Hashable] = set()  # keys whose batch is running now
        self._waiting: dict[Hashable, int] = {}  # key -> rows gathered, not yet running
        self._cost: dict[Hashable, float] = {}  # key -> seconds its last batch took
        self._arrived: dict[Hashable, float] = {}  # key -> when its latest request came
        self._company: dict[Hashable, int] = {}  # key -> requests in its last batch
        #: (rows, requests) of the latest batches run, for the benchmark and the tests
        self.batches: deque[tuple[int, int]] = deque(maxlen=4096)
        self._tasks: set[asyncio.Task] = set()  # `_alead`s running (kept referenced)

    def run(self, key: Hashable, rows: Rows, fn: BatchFn) -> Rows:
        """``fn`` on ``rows`` [n, ...], batched with the other callers of ``key``: this call's
        ``n`` result rows, or the exception its rows raised (alone)."""
        if not self._batches(rows):
            return fn(rows)
        group, index, leader, alone = self._join(key, rows)
        if leader:
            self._lead(key, group, fn, alone)
        else:
            group.done.wait()
        return group.answer(index)

    async def arun(self, key: Hashable, rows: Rows, fn: BatchFn) -> Rows:
        """`run` from an event loop: this request waits in the loop, and ``fn`` runs in a worker thread
        once per batch."""
        if not self._batches(rows):
            return await anyio.to_thread.run_sync(fn, rows)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        group, index, leader, alone = self._join(key, rows, (loop, future))
        if leader:  # a task of its own: this request's cancellation does not stop the others' batch
            task = loop.create_task(self._alead(key, group, fn, alone))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future
        return group.answer(index)

    def _batches(self, rows: Rows) -> bool:
        return self.max_delay_s > 0 and self.max_rows > 1 and len(rows) < self.max_rows

    def _join(self, key: Hashable, rows: Rows, waiter: tuple | None = None) -> tuple[_Group, int, bool, bool]:
        """``rows`` added to ``key``'s open group (or a new one, which this caller leads): the group, this
        member's index in it, whether it leads, and whether it is alone (no company lately)."""
        n = len(rows)
        with self._cond:
            now = time.monotonic()
            alone = (self._company.get(key, 1) == 1  # no company lately
                     and now - self._arrived.get(key, -np.inf) > self.max_delay_s)
            self._arrived[key] = now
            group = self._open.get(key)
            leader = group is None or group.rows + n > self.max_rows
            closes = leader and group is not None  # the open group, full, closed by this one
            if leader:
                group = self._open[key] = _Group(now)
            index = group.add(rows, now)
            if waiter is not None:
                group.futures.append(waiter)
            self._waiting[key] = self._waiting.get(key, 0) + n
            if closes or group.rows >= self.max_rows:  # a leader may run now; a join short of that only
                self._cond.notify_all()  # moves the quiet window later, which its leader finds when it looks
        return group, index, leader, alone

    def waiting(self, key: Hashable | None = None) -> int:
        """Rows of ``key`` (None: of every key) gathered and not yet running."""
        with self._cond:
            return self._waiting.get(key, 0) if key is not None else sum(self._waiting.values())

    def _ready(self, key: Hashable, group: _Group, alone: bool) -> float | None:
        """Under ``_cond``: 0 when ``group`` runs now (then it is closed and its key busy), else how long
        its leader waits before looking again (None: until notified)."""
        deadline = group.opened + self.max_delay_s
        quiet = 0.0 if alone else min(self.quiet_s, self._cost.get(key, self.quiet_s))
        now = time.monotonic()
        idle = key not in self._busy
        if self._open.get(key) is group and (group.rows >= self.max_rows or (idle and now >= deadline)):
            del self._open[key]  # closed: later requests open the next group
        closed = self._open.get(key) is not group
        if idle and (closed or now - group.last_join >= quiet):
            if self._open.get(key) is group:
                del self._open[key]
            self._busy.add(key)
            self._waiting[key] -= group.rows
            if not self._waiting[key]:
                del self._waiting[key]
            return 0.0
        if not idle:  # until the running batch ends (or a join fills this group), taking requests meanwhile
            return None
        waits = [group.last_join + quiet - now] + ([] if closed else [deadline - now])
        return max(1e-6, min(waits))

    def _lead(self, key: Hashable, group: _Group, fn: BatchFn, alone: bool) -> None:
        with self._cond:
            while (wait := self._ready(key, group, alone)) != 0:
                self._cond.wait(wait)
        self._run_batch(key, group, fn)

    async def _alead(self, key: Hashable, group: _Group, fn: BatchFn, alone: bool) -> None:
        """`_lead` in one worker thread for the batch: it waits there for company (a condition's timeouts
        are exact; an event loop's timers round a 0.5 ms quiet window up to 1 ms or down to none) and
        computes; its members are told in their loops."""
        ran = False

        def lead() -> None:
            nonlocal ran
            ran = True
            self._lead(key, group, fn, alone)

        try:
            await anyio.to_thread.run_sync(lead)
        finally:
            if not ran:  # cancelled (the loop going down) before its thread ran: no member waits for ever
                with self._cond:
                    if self._open.get(key) is group:
                        del self._open[key]
                    self._waiting[key] -= group.rows
                    if not self._waiting[key]:
                        del self._waiting[key]
                    group.errors = [RuntimeError("The batch this request was in did not run.")] * len(group.parts)
                    self._cond.notify_all()
                group.finish()

    def _run_batch(self, key: Hashable, group: _Group, fn: BatchFn) -> None:
        """``group``'s batch, its key busy (`_ready` said 0): computed, then its members told."""
        # until computed (a BaseException may stop the leader): no member reads a missing result
        group.errors = [RuntimeError("The batch this request was in did not run.")] * len(group.parts)
        started = time.monotonic()
        try:
            self._compute(group, fn)
        finally:
            with self._cond:
                self._ended(key, group, time.monotonic() - started)
            group.finish()

    def _ended(self, key: Hashable, group: _Group, took: float) -> None:
        """Under ``_cond``: ``group``'s batch is over (it took ``took`` seconds); its key is free."""
        if len(self._cost) >= 4096:  # keys of parameters no longer asked for: forget them all
            self._cost.clear()
            self._arrived.clear()
            self._company.clear()
        self._cost[key] = took
        self._company[key] = len(group.parts)
        self._busy.discard(key)
        self.batches.append((group.rows, len(group.parts)))
        self._cond.notify_all()

    @staticmethod
    def _compute(group: _Group, fn: BatchFn) -> None:
        """Each member's result rows (or error) in ``group``: one call of ``fn`` on all their rows,
        or, when that fails and there is more than one member, one call per member."""
        k = len(group.parts)
        group.results, group.errors = [None] * k, [None] * k
        if k > 1:
            try:
                out = fn(np.concatenate(group.parts))  # [sum n_i, ...]
                if len(out) != group.rows:
                    raise ValueError(f"the batch of {group.rows} rows gave {len(out)} results")
            except Exception:  # noqa: BLE001 - one of them broke it: each runs alone below
                pass
            else:
                bounds = np.cumsum([0] + [len(p) for p in group.parts])
                group.results = [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
                return
        for i, part in enumerate(group.parts):
            try:
                group.results[i] = fn(part)
            except Exception as exc:  # noqa: BLE001 - this member's own failure, raised in its thread
                group.errors[i] = exc
