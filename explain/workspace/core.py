"""What every workspace part shares: the database, the blob store, roles and the audit trail."""
from __future__ import annotations

import secrets
import string
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from explain.workspace.blobs import BlobStore
from explain.workspace.db import Database
from explain.workspace.roles import LOCAL_USER, Action, Actor, require
from explain.workspace.schema import ApiToken, AuditEntry, User


def iso(when: datetime | None) -> str | None:
    """A timestamp as ISO 8601 text (SQLite hands datetimes back without their zone: they are UTC)."""
    if when is None:
        return None
    text = when.isoformat(timespec="seconds")
    return text if when.tzinfo else text + "+00:00"


_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 12) -> str:
    """A random id for a run or a job (~71 bits), letters and digits only: safe in a URL and never
    read as a command-line option (a ``token_urlsafe`` id may start with ``-``)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class Core:
    def __init__(self, db: Database, blobs: BlobStore):
        self.db = db
        self.blobs = blobs

    # -- roles -----------------------------------------------------------------
    def role_of(self, session: Session, actor: Actor) -> str | None:
        """The actor's role now: from the users table, admin for the operator's tools and for the
        single local user of a workspace without accounts; None for anyone else."""
        if actor.operator:
            return "admin"
        if actor.token:
            return session.scalar(select(ApiToken.role).where(ApiToken.name == actor.name))
        user = session.scalar(select(User).where(User.name == actor.name))
        if user is not None:
            return user.role
        if actor.name == LOCAL_USER and not session.scalar(select(func.count()).select_from(User)):
            return "admin"
        return None

    def require(self, session: Session, actor: Actor, action: Action) -> str:
        role = self.role_of(session, actor)
        require(actor.name, role, action)
        return role

    # -- audit -----------------------------------------------------------------
    @staticmethod
    def audit(session: Session, actor: Actor, action: str, object_type: str, object_id: Any,
              before: dict | None = None, after: dict | None = None) -> None:
        """One append-only audit row, in the same transaction as the write it records."""
        session.add(AuditEntry(actor=actor.name, action=action, object_type=object_type,
                               object_id=str(object_id), before=before, after=after))
