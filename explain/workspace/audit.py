"""The audit log: read (admins only) and exported as CSV. Rows are written by each write itself
(`explain.workspace.core.Core.audit`, in the same transaction); nothing updates or deletes them."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass

from sqlalchemy import select

from explain.spreadsheet import spreadsheet_safe
from explain.workspace.core import Core, iso
from explain.workspace.roles import Action, Actor
from explain.workspace.schema import AuditEntry

COLUMNS = ("id", "at", "actor", "action", "object_type", "object_id", "before", "after")


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: str
    actor: str
    action: str
    object_type: str
    object_id: str
    before: dict | None
    after: dict | None

    def to_dict(self) -> dict:
        return asdict(self)


class Audit:
    def __init__(self, core: Core):
        self.core = core

    def rows(self, actor: Actor, limit: int | None = None) -> list[AuditRow]:
        """Audit rows, oldest first (the newest ``limit`` if given)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.READ_AUDIT)
            query = select(AuditEntry).order_by(AuditEntry.id.desc())
            if limit:
                query = query.limit(limit)
            rows = [AuditRow(a.id, iso(a.at), a.actor, a.action, a.object_type, a.object_id, a.before, a.after)
                    for a in s.scalars(query)]
        return rows[::-1]

    def csv(self, actor: Actor) -> str:
        """The whole log as CSV, each cell through `explain.spreadsheet.spreadsheet_safe` (a formula is
        defused)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(COLUMNS)
        for row in self.rows(actor):
            values = row.to_dict()
            writer.writerow([spreadsheet_safe(json.dumps(values[c], sort_keys=True) if c in ("before", "after")
                                   and values[c] is not None else values[c]) for c in COLUMNS])
        return buf.getvalue()
