"""Who may do what in a workspace: the one permission table.

Roles are ordered; each includes the one below it:

    viewer   read everything, open links
    reviewer + comment (post, resolve, reopen), decide (approve / request changes)
    editor   + upload and register models, load a model to run it in the page (an upload of
             one's own or a sample / version explored live), save runs and queue jobs,
             tags, aliases, attachments
    admin    + users, API tokens, the audit log, protecting an alias (and naming its approvers)

A protected alias (`explain.workspace.registry.Registry.protect`) narrows EDIT_REGISTRY and DECIDE
further: only admins and its approvers move it, and only through an approving decision.

Every write in `explain.workspace` calls `require` with the actor's role as the
database says it is now (never as a page or a request claims it), so a viewer who
crafts a request is refused the same as one who clicks a hidden button.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from explain.errors import PermissionDenied, UsageError

ROLES: tuple[str, ...] = ("viewer", "reviewer", "editor", "admin")

#: The user of a workspace with no accounts: today's single-user Glassbox.
LOCAL_USER = "local"


class Action(StrEnum):
    READ = "read"
    COMMENT = "comment"
    DECIDE = "decide"
    UPLOAD = "upload"
    LOAD_MODEL = "load_model"  # load a model into a page to run it there (`Workspace.load_model`)
    SAVE_RUN = "save_run"
    EDIT_REGISTRY = "edit_registry"  # tags, aliases, attachments
    MANAGE_USERS = "manage_users"
    MANAGE_TOKENS = "manage_tokens"
    READ_AUDIT = "read_audit"
    PROTECT_ALIAS = "protect_alias"  # protect / unprotect an alias, name its approvers


#: The lowest role allowed each action.
MINIMUM_ROLE: dict[Action, str] = {
    Action.READ: "viewer",
    Action.COMMENT: "reviewer",
    Action.DECIDE: "reviewer",
    Action.UPLOAD: "editor",
    Action.LOAD_MODEL: "editor",
    Action.SAVE_RUN: "editor",
    Action.EDIT_REGISTRY: "editor",
    Action.MANAGE_USERS: "admin",
    Action.MANAGE_TOKENS: "admin",
    Action.READ_AUDIT: "admin",
    Action.PROTECT_ALIAS: "admin",
}


def check_role(role: str) -> str:
    """``role`` if it is one of `ROLES`, else a `UsageError` naming them."""
    if role not in ROLES:
        raise UsageError(f"Unknown role {role!r}.", f"Choose one of {', '.join(ROLES)}.")
    return role


def allows(role: str | None, action: Action) -> bool:
    """Whether ``role`` (None: not a member) may do ``action``."""
    if role is None:
        return False
    return ROLES.index(check_role(role)) >= ROLES.index(MINIMUM_ROLE[Action(action)])


def require(user: str, role: str | None, action: Action) -> None:
    """Raise `PermissionDenied` unless ``role`` allows ``action``."""
    if not allows(role, action):
        who = f"{user} ({role})" if role else f"{user} (not a member of this workspace)"
        raise PermissionDenied(
            f"{who} may not {Action(action).value.replace('_', ' ')}.",
            f"That needs the {MINIMUM_ROLE[Action(action)]} role; ask a workspace admin.")


@dataclass(frozen=True)
class Actor:
    """Who is asking: a signed-in user's name, or the operator's own tools.

    The role is never part of the actor: the workspace looks it up on every call.
    ``operator`` is True for the command line and the embedded worker, which run
    with the server's own rights (whoever can run them can read the database file).
    """

    name: str
    operator: bool = False
    token: bool = False  # an HTTP API token: its role is the token's, ``name`` the token's name

    @classmethod
    def local(cls) -> Actor:
        """The single user of a workspace with no accounts."""
        return cls(LOCAL_USER)
