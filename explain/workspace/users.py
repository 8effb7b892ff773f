"""Accounts: local users with bcrypt-hashed passwords (or OIDC identities), roles and API tokens."""
from __future__ import annotations

import base64
import functools
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC

import bcrypt
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from explain.digest import digest_bytes, hmac_sha256
from explain.errors import NotFound, UsageError
from explain.workspace.core import Core, iso
from explain.workspace.roles import Action, Actor, check_role
from explain.workspace.schema import ApiToken, Model, ProtectedAlias, User

MIN_PASSWORD = 8


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    email: str | None
    created: str
    has_password: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _info(user: User) -> UserInfo:
    return UserInfo(user.name, user.role, user.email, iso(user.created_at), user.password_hash is not None)


def identity_of(user: User) -> str:
    """The account's identity generation: a digest of its row id, creation time and password hash, so it
    changes when the account is removed and added again (under the same name, even with the same
    password: bcrypt salts anew) or its password changes. A sign-in is bound to it (`Users.signed_in_as`)."""
    created = user.created_at
    if created is not None and created.tzinfo is not None:  # PostgreSQL: aware; SQLite: naive UTC
        created = created.astimezone(UTC).replace(tzinfo=None)
    when = created.isoformat(timespec="microseconds") if created is not None else ""
    return digest_bytes(f"{user.id}\0{when}\0{user.password_hash or ''}".encode())[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_session(key: str, name: str, identity: str, days: float, now: float | None = None) -> str:
    """A sign-in cookie's value: ``name``, the account's `identity_of` and an expiry, signed with ``key``
    (HMAC-SHA256); read back by `Users.signed_in_as`."""
    expires = (time.time() if now is None else now) + days * 86400
    payload = _b64(json.dumps({"username": name, "identity": identity, "exp_date": expires},
                              separators=(",", ":")).encode())
    return f"{payload}.{_b64(hmac_sha256(key.encode(), payload.encode()))}"


def read_session(key: str, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(name, identity) of a `sign_session` value whose signature holds and that has not expired; else None."""
    payload, _, signature = str(token).partition(".")
    expected = _b64(hmac_sha256(key.encode(), payload.encode()))
    if not signature or not hmac.compare_digest(signature, expected):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        name, identity, expires = str(data["username"]), str(data["identity"]), float(data["exp_date"])
    except (ValueError, TypeError, KeyError):
        return None
    return (name, identity) if expires > (time.time() if now is None else now) else None


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown names against, so timing does not tell which names exist."""
    return hash_password(secrets.token_hex(8))


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise UsageError(f"{name!r} is not a user name.", "Use 1-200 characters without spaces.")
    return name


class Users:
    def __init__(self, core: Core):
        self.core = core

    def any_accounts(self) -> bool:
        """True once one account exists: from then on everyone signs in."""
        with self.core.db.transaction() as s:
            return bool(s.scalar(select(func.count()).select_from(User)))

    def role_of(self, actor: Actor) -> str | None:
        with self.core.db.transaction() as s:
            return self.core.role_of(s, actor)

    def add(self, actor: Actor, name: str, role: str, password: str | None = None,
            email: str | None = None) -> UserInfo:
        """Add an account. The first one must be an admin (it ends single-user mode)."""
        name, role = _check_name(name), check_role(role)
        if password is not None and len(password) < MIN_PASSWORD:
            raise UsageError(f"The password is shorter than {MIN_PASSWORD} characters.")
        with self.core.db.transaction() as s:
            # Without accounts only the local user and the operator are admins: nobody else (a token,
            # an unknown name) may create the first account and make themselves admin.
            self.core.require(s, actor, Action.MANAGE_USERS)
            first = not s.scalar(select(func.count()).select_from(User))
            if first and role != "admin":
                raise UsageError("The first account must be an admin.",
                                 f"Run `python -m explain users add {name} --role admin` first.")
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise UsageError(f"User {name!r} already exists.", "Use `users set-role` to change the role.")
            user = User(name=name, role=role, email=email,
                        password_hash=hash_password(password) if password is not None else None)
            s.add(user)
            try:
                s.flush()
            except IntegrityError:  # the same name added by another session a moment ago
                raise UsageError(f"User {name!r} already exists.") from None
            self.core.audit(s, actor, "user.add", "user", name, after={"role": role})
            return _info(user)

    def list(self, actor: Actor) -> list[UserInfo]:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_USERS)
            return [_info(u) for u in s.scalars(select(User).order_by(User.name))]

    def _get(self, s, name: str) -> User:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"No user {name!r}.")
        return user

    def _admins_left(self, s, without: str) -> int:
        return s.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.name != without))

    def set_role(self, actor: Actor, name: str, role: str) -> UserInfo:
        role = check_role(role)
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_USERS)
            user = self._get(s, name)
            if user.role == "admin" and role != "admin" and not self._admins_left(s, name):
                raise UsageError(f"{name} is the last admin.", "Make another user admin first.")
            before = user.role
            user.role = role
            self.core.audit(s, actor, "user.set_role", "user", name, before={"role": before}, after={"role": role})
            return _info(user)

    def remove(self, actor: Actor, name: str) -> dict:
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_USERS)
            user = self._get(s, name)
            if user.role == "admin" and not self._admins_left(s, name):
                raise UsageError(f"{name} is the last admin.", "Make another user admin first.")
            # approvers are named by account: a later account of this name (someone else) approves nothing
            approver_of = []
            for row, model in s.execute(select(ProtectedAlias, Model.name).join(Model)
                                        .order_by(Model.name, ProtectedAlias.name)):
                if name in row.approvers:
                    row.approvers = [a for a in row.approvers if a != name]
                    approver_of.append(f"{model}@{row.name}")
            self.core.audit(s, actor, "user.remove", "user", name, before={"role": user.role},
                            after={"approver_of_protected_aliases": approver_of} if approver_of else None)
            s.delete(user)
            return {"removed": name}

    def set_password(self, actor: Actor, name: str, password: str) -> UserInfo:
        """A new password for ``name`` (admins); every sign-in of the old one ends (`signed_in_as`)."""
        if len(password) < MIN_PASSWORD:
            raise UsageError(f"The password is shorter than {MIN_PASSWORD} characters.")
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_USERS)
            user = self._get(s, name)
            user.password_hash = hash_password(password)
            self.core.audit(s, actor, "user.set_password", "user", name)
            return _info(user)

    # -- sign-in sessions --------------------------------------------------------
    def identity(self, name: str) -> str | None:
        """``name``'s account's `identity_of` now; None when there is no such account."""
        with self.core.db.transaction() as s:
            user = s.scalar(select(User).where(User.name == name))
            return identity_of(user) if user is not None else None

    def signed_in_as(self, key: str, token: str, now: float | None = None) -> tuple[str, str] | None:
        """(name, identity) of a sign-in cookie (`sign_session`) that holds now: signed with ``key``, not
        expired, and issued to the account of that name as it is now. A cookie of an account since removed,
        added again or given another password is None: those end every sign-in of the account before."""
        found = read_session(key, token, now)
        if found is None or self.identity(found[0]) != found[1]:
            return None
        return found

    def verify_password(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s (bcrypt; constant-time either way)."""
        with self.core.db.transaction() as s:
            user = s.scalar(select(User).where(User.name == name))
            stored = user.password_hash if user is not None else None
        ok = bcrypt.checkpw(password.encode(), (stored or _dummy_hash()).encode())
        return bool(ok and stored)

    def credentials(self) -> dict:
        """The accounts in streamlit-authenticator's ``credentials`` shape (hashes, never passwords), each
        with its `identity_of` as read with its hash (a sign-in is bound to the hash it was checked against)."""
        with self.core.db.transaction() as s:
            users = list(s.scalars(select(User).where(User.password_hash.is_not(None))))
            return {"usernames": {u.name: {"name": u.name, "password": u.password_hash, "email": u.email or "",
                                           "roles": [u.role], "identity": identity_of(u)} for u in users}}

    # -- API tokens --------------------------------------------------------------
    def add_token(self, actor: Actor, name: str, role: str) -> str:
        """A new API token for ``role``; returned once, only its sha256 is stored."""
        name, role = _check_name(name), check_role(role)
        token = "gbx_" + secrets.token_urlsafe(32)
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_TOKENS)
            if s.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
                raise UsageError(f"A token named {name!r} exists.")
            s.add(ApiToken(name=name, role=role, token_sha256=digest_bytes(token.encode()),
                           created_by=actor.name))
            try:
                s.flush()
            except IntegrityError:
                raise UsageError(f"A token named {name!r} exists.") from None
            self.core.audit(s, actor, "token.add", "token", name, after={"role": role})
        return token

    def remove_token(self, actor: Actor, name: str) -> dict:
        """Revoke a token: requests carrying it get 401 from then on."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_TOKENS)
            row = s.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None:
                raise NotFound(f"No token named {name!r}.")
            self.core.audit(s, actor, "token.remove", "token", name, before={"role": row.role})
            s.delete(row)
            return {"removed": name}

    def tokens(self, actor: Actor) -> list[dict]:
        """Token names, roles and creators (never the tokens)."""
        with self.core.db.transaction() as s:
            self.core.require(s, actor, Action.MANAGE_TOKENS)
            return [{"name": t.name, "role": t.role, "created_by": t.created_by, "created": iso(t.created_at)}
                    for t in s.scalars(select(ApiToken).order_by(ApiToken.name))]

    def token_identity(self, token: str) -> tuple[str, str] | None:
        """(token name, role) for a valid token, else None."""
        digest = digest_bytes(token.encode())
        with self.core.db.transaction() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
            return (row.name, row.role) if row is not None else None
