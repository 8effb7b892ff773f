"""The API's per-request lookups (who a token is, which version ``NAME@ALIAS`` means), remembered
while the workspace has not changed.

Every write of the workspace appends an audit row in its own transaction (`Core.audit`): a token
added or revoked, an alias moved, a version registered, a tag, a decision. So the newest audit ids
are a stamp of everything these lookups read: one indexed read of a few integers per request
(~0.1 ms) instead of the token's, the role's and the version's queries (~1.5 ms). When the stamp
differs from the one the remembered answers were read under, they are all forgotten, so a token
revoked or an alias moved by any process (the CLI, the pages, another server) is seen by the next
request, as before.

The stamp is the newest ``STAMP_IDS`` rows' ids and times. Their times, because a workspace restored
from a backup hands the restored ids out again: the rows written after a restore have the ids the
lost rows had, never their times. On PostgreSQL ids come from a sequence, so a transaction that took a
smaller id can commit after one that took a larger one, and after any number of them (slow between
its flush and its commit): the stamp is read under ``LOCK TABLE audit_log IN SHARE MODE NOWAIT``,
which no transaction holding an uncommitted audit row lets through; where one is under way the stamp
is empty, and nothing is remembered or used under it. So any later commit has an id above all those
read, and shows. (SQLite has one writer at a time: its ids commit in their order.)

    lookups = Lookups(ws)
    who = lookups.identity(token)                 # Identity(name, role, stamp) | None (`Users.token_identity`)
    lookups.version(actor, "m@prod", who.stamp)   # VersionInfo, as `Registry.version` (its role check included)

A request reads the stamp once, with its token (the API's `Gate`), and looks its version up under
that stamp, if within `STAMP_STANDS_S`: an answer remembered under another one is
not used, and one read for it is not kept. From the event loop (`identity_soon`, `remembered_version`)
the stamp is read on a driver connection of its own (`_StampReader`, ~10 µs): on SQLite in the loop
itself (a WAL reader waits for no writer), on PostgreSQL as a `SharedRead` in a thread: requests
waiting together share one read begun after each of them came (as safe as a read each); what is
remembered is found without a thread hop (issue 23).
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import NamedTuple, TypeVar

import anyio
from sqlalchemy import event, select
from sqlalchemy.pool import QueuePool

from explain.digest import digest_bytes
from explain.workspace import Actor, Workspace
from explain.workspace.registry import VersionInfo, parse_ref
from explain.workspace.schema import AuditEntry

#: how many of the newest audit rows make the stamp
STAMP_IDS = 32
#: how long after a request's token check its version is looked up under that check's stamp; later (a
#: body sent slowly, a wait for a thread) under a stamp read then: a token revoked or an alias moved in
#: between is seen by that request, as by the next
STAMP_STANDS_S = 0.5
#: PostgreSQL's answers to the stamp's LOCK NOWAIT that mean "no settled stamp now": lock_not_available
#: (an audit row is being written), insufficient_privilege (a role that may not take the lock)
_UNSETTLED = frozenset({"55P03", "42501"})
#: the most answers remembered; past it they are all forgotten (unknown tokens are never remembered)
MAX_ENTRIES = 4096

T = TypeVar("T")
Stamp = tuple[tuple, ...]  # (id, at) of the newest audit rows, newest first; () when unsettled


class Identity(NamedTuple):
    """A known token: its name and role, and the workspace's stamp they were checked under."""
    name: str
    role: str
    stamp: Stamp


class SharedRead:
    """A blocking ``read()`` for the event loop's callers, in a thread: the callers that asked while no read
    had started share the next one, so each gets a value read after it asked (as fresh as a read of its
    own) and concurrent requests cost one thread hop and one query together, not one each. Each event
    loop has its own (a test client may run one per request, in threads of their own)."""

    def __init__(self, read: Callable[[], T]):
        self._read = read
        self._lock = threading.Lock()  # around `_loops` only: each loop's own state is touched in its thread
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reads] = weakref.WeakKeyDictionary()

    async def __call__(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            reads = self._loops.get(loop)
            if reads is None:
                reads = self._loops[loop] = _Reads()
        future = loop.create_future()
        reads.asking.append(future)
        if reads.task is None:
            reads.task = loop.create_task(self._reads(reads))
        return await future

    async def _reads(self, reads: _Reads) -> None:
        asking: list[asyncio.Future] = []
        try:
            while reads.asking:
                asking, reads.asking = reads.asking, []  # whoever asks from now on waits for the next read
                try:
                    value = await anyio.to_thread.run_sync(self._read)
                except Exception as exc:  # noqa: BLE001 - each caller's to raise
                    for future in asking:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for future in asking:
                        if not future.done():  # not cancelled meanwhile
                            future.set_result(value)
        finally:
            reads.task = None
            for future in [*asking, *reads.asking]:  # cancelled itself (the loop going down): nobody waits for ever
                if not future.done():
                    future.cancel()
            reads.asking = []


class _Reads:
    """One event loop's `SharedRead` state."""

    def __init__(self):
        self.asking: list[asyncio.Future] = []  # the callers the next read answers
        self.task: asyncio.Task | None = None  # the reads running, while anyone asks


class StampBusy(Exception):
    """A stamp read that would have waited for a lock (`_StampReader` with ``waits=False``)."""


class _StampReader:
    """`Lookups.stamp`'s reads, on a database connection of its own held between them, through the
    driver itself: the read every request waits for costs ~10 µs, not the ~90 µs of a pooled
    connection and SQLAlchemy's execution (issue 23). Each read is a statement of its own (SQLite: no
    transaction is left open; PostgreSQL: rolled back), so it sees every write committed before it
    began, as a fresh connection's would. A connection that fails is dropped and the read tried once
    on a new one; the connection is closed with the engine (``Workspace.close``: `engine.dispose`).
    ``waits=False`` (SQLite only): the connection never waits for a lock (``busy_timeout`` 0), and a read
    that would wait raises `StampBusy`. (A pool that is not a `QueuePool`, SQLite in memory, keeps its
    connections: each read checks one out.)"""

    def __init__(self, engine, waits: bool = True):
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self.waits = waits
        self.holds = isinstance(engine.pool, QueuePool)
        query = select(AuditEntry.id, AuditEntry.at).order_by(AuditEntry.id.desc()).limit(STAMP_IDS)
        self.sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        self._lock = threading.Lock()  # one read at a time on the connection (threads, event loops)
        self._held = None  # a pool connection detached from its pool: this reader's own
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def read(self) -> Stamp:
        if not self.holds:
            with contextlib.closing(self.engine.raw_connection()) as conn:
                return self._read(conn.dbapi_connection)
        with self._lock:
            for attempt in (0, 1):
                fresh = self._held is None
                if fresh:
                    self._held = self.engine.raw_connection()  # the pool's connect events ran (SQLite's pragmas)
                    self._held.detach()  # never back to the pool, which keeps its size for the others
                    if not self.waits:
                        self._held.dbapi_connection.execute("PRAGMA busy_timeout=0")
                try:
                    return self._read(self._held.dbapi_connection)
                except Exception as exc:
                    if not self.waits and getattr(exc, "sqlite_errorcode", 0) & 0xFF in (5, 6):  # BUSY, LOCKED
                        raise StampBusy() from exc  # the connection is sound
                    self._drop()
                    if fresh or attempt:
                        raise
            raise AssertionError("unreachable")

    def _read(self, conn) -> Stamp:
        cursor = conn.cursor()
        try:
            if self.postgres:
                try:  # held to the end of this read: no audit row is uncommitted while the ids are read
                    cursor.execute("LOCK TABLE audit_log IN SHARE MODE NOWAIT")
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) not in _UNSETTLED:
                        raise
                    return ()
            cursor.execute(self.sql)
            return tuple(map(tuple, cursor.fetchall()))  # (id, at) rows
        finally:
            cursor.close()
            conn.rollback()  # PostgreSQL: the lock's transaction ended; SQLite: none is open

    def _drop(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.close()
            except Exception:  # noqa: BLE001 - a connection already broken
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()


class Lookups:
    """Token identities and version lookups of one workspace, valid while its audit log is unchanged."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None  # the stamp the remembered answers were read under
        self._answers: dict[Hashable, object] = {}
        self.misses = 0  # answers read from the database (for the tests)
        engine = ws.core.db.engine
        self._stamper = _StampReader(engine)
        self._stamps = SharedRead(self.stamp)  # `identity_soon`'s
        # SQLite in WAL mode: a reader waits for no writer, so the event loop reads the stamp itself on a
        # connection that never waits (~10 µs, no thread hop: the hop cost the loop more than the read);
        # a read that would wait goes to a thread as PostgreSQL's do (a network round trip each)
        self._loop_stamper = _StampReader(engine, waits=False) if engine.dialect.name == "sqlite" else None

    def stamp(self) -> Stamp:
        """The newest audit rows' (id, at), newest first: changes with every committed write of the
        workspace; empty (nothing remembered) on PostgreSQL while an audit row is being written."""
        return self._stamper.read()

    def _remembered(self, key: Hashable, read: Callable[[], T], stamp: Stamp | None = None) -> tuple[T, Stamp]:
        """``read()``'s answer for ``key`` and the stamp it holds under: remembered under the stamp read
        now (``stamp`` None), or under the caller's ``stamp`` if that is the one remembered (else read,
        not kept). The stamp is read before the answer, so an answer is at least as new as its stamp."""
        fresh = stamp is None
        if fresh:
            stamp = self.stamp()
        hit, answer = self._recall(key, stamp, fresh)
        return (answer if hit else self._read(key, read, stamp)), stamp

    def _recall(self, key: Hashable, stamp: Stamp, fresh: bool) -> tuple[bool, object]:
        """(True, the answer remembered for ``key``) under ``stamp``, else (False, None); reads nothing.
        A ``fresh`` stamp (read after the request came) other than the remembered one forgets them all."""
        if not stamp:  # unsettled, or no audit row at all: neither remembered nor used
            return False, None
        with self._lock:
            if stamp == self._stamp:
                if key in self._answers:
                    return True, self._answers[key]
            elif fresh:
                self._stamp, self._answers = stamp, {}
        return False, None

    def _read(self, key: Hashable, read: Callable[[], T], stamp: Stamp) -> T:
        """``read()``'s answer, kept for ``key`` if ``stamp`` is still the remembered one."""
        answer = read()
        self.misses += 1
        if answer is not None and stamp:
            with self._lock:
                if self._stamp == stamp:  # not forgotten meanwhile: a newer stamp's answers are not ours
                    if len(self._answers) >= MAX_ENTRIES:
                        self._answers = {}
                    self._answers[key] = answer
        return answer

    def identity(self, token: str) -> Identity | None:
        """The token's name and role if it is valid (`Users.token_identity`), with the stamp read now."""
        found, stamp = self._remembered(("token", digest_bytes(token.encode())),
                                        lambda: self.ws.users.token_identity(token))
        return None if found is None else Identity(*found, stamp)

    async def identity_soon(self, token: str) -> Identity | None:
        """`identity` from the event loop: the stamp read in a thread after this call began, one read
        shared by the requests that asked before it started (`SharedRead`: as fresh for each as a read
        of its own; SQLite's read in the loop, `_loop_stamper`); the token read in a thread only when it
        is not remembered under that stamp."""
        stamp = None
        if self._loop_stamper is not None:
            try:
                stamp = self._loop_stamper.read()
            except StampBusy:
                pass
        if stamp is None:
            stamp = await self._stamps()
        key = ("token", digest_bytes(token.encode()))
        hit, found = self._recall(key, stamp, fresh=True)
        if not hit:
            found = await anyio.to_thread.run_sync(self._read, key, lambda: self.ws.users.token_identity(token), stamp)
        return None if found is None else Identity(*found, stamp)

    def remembered_version(self, actor: Actor, ref: str, stamp: Stamp | None, checked: float | None
                           ) -> VersionInfo | None:
        """`version`'s answer when it is remembered under the request's ``stamp`` (checked at ``checked``,
        within `STAMP_STANDS_S`): read nothing, so the event loop may ask; None where `version` would read
        (then ask it, in a thread)."""
        if not stamp or checked is None or time.monotonic() - checked > STAMP_STANDS_S:
            return None
        name, which = parse_ref(ref)
        return self._recall(("version", actor, name, which), stamp, fresh=False)[1]  # type: ignore[return-value]

    def version(self, actor: Actor, ref: str, stamp: Stamp | None = None, checked: float | None = None) -> VersionInfo:
        """The version ``ref`` (``NAME``, ``NAME@vN``, ``NAME@ALIAS``) means for ``actor``, who may read
        it (`Registry.version`: NotFound and the role's refusal are raised, never remembered); under
        ``stamp`` (the request's, from `identity`; ``checked``: `time.monotonic()` before it was read, and
        then only within `STAMP_STANDS_S` of it), else the stamp read now."""
        if checked is not None and time.monotonic() - checked > STAMP_STANDS_S:
            stamp = None
        name, which = parse_ref(ref)
        return self._remembered(("version", actor, name, which),
                                lambda: self.ws.registry.version(actor, name, which), stamp)[0]
