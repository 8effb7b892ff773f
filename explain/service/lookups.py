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
not used, and one read for it is not kept.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import NamedTuple, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

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


class Lookups:
    """Token identities and version lookups of one workspace, valid while its audit log is unchanged."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None  # the stamp the remembered answers were read under
        self._answers: dict[Hashable, object] = {}
        self.misses = 0  # answers read from the database (for the tests)
        self._query = select(AuditEntry.id, AuditEntry.at).order_by(AuditEntry.id.desc()).limit(STAMP_IDS)
        self._postgres = ws.core.db.engine.dialect.name == "postgresql"

    def stamp(self) -> Stamp:
        """The newest audit rows' (id, at), newest first: changes with every committed write of the
        workspace; empty (nothing remembered) on PostgreSQL while an audit row is being written."""
        with self.ws.core.db.engine.connect() as conn:
            if self._postgres:
                try:  # held to the end of this read: no audit row is uncommitted while the ids are read
                    conn.exec_driver_sql("LOCK TABLE audit_log IN SHARE MODE NOWAIT")
                except DBAPIError as exc:
                    if getattr(exc.orig, "sqlstate", None) not in _UNSETTLED:
                        raise
                    return ()
            return tuple((row_id, at) for row_id, at in conn.execute(self._query))

    def _remembered(self, key: Hashable, read: Callable[[], T], stamp: Stamp | None = None) -> tuple[T, Stamp]:
        """``read()``'s answer for ``key`` and the stamp it holds under: remembered under the stamp read
        now (``stamp`` None), or under the caller's ``stamp`` if that is the one remembered (else read,
        not kept). The stamp is read before the answer, so an answer is at least as new as its stamp."""
        now = stamp is None
        if now:
            stamp = self.stamp()
        if not stamp:  # unsettled, or no audit row at all: read, neither remembered nor used
            self.misses += 1
            return read(), stamp
        with self._lock:
            if stamp == self._stamp:
                if key in self._answers:
                    return self._answers[key], stamp  # type: ignore[return-value]
            elif now:
                self._stamp, self._answers = stamp, {}
        answer = read()
        self.misses += 1
        if answer is not None:
            with self._lock:
                if self._stamp == stamp:  # not forgotten meanwhile: a newer stamp's answers are not ours
                    if len(self._answers) >= MAX_ENTRIES:
                        self._answers = {}
                    self._answers[key] = answer
        return answer, stamp

    def identity(self, token: str) -> Identity | None:
        """The token's name and role if it is valid (`Users.token_identity`), with the stamp read now."""
        found, stamp = self._remembered(("token", digest_bytes(token.encode())),
                                        lambda: self.ws.users.token_identity(token))
        return None if found is None else Identity(*found, stamp)

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
