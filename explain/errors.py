"""Errors a user can cause. The CLI maps them to exit codes, the app to messages.

Every error carries a one-line, user-facing ``reason`` (no traceback needed to
understand it) and, where useful, a ``hint`` saying what to do instead.
"""
from __future__ import annotations


class GlassboxError(Exception):
    """Base of every error Glassbox raises on purpose."""

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason if not hint else f"{reason} {hint}")
        self.reason = reason
        self.hint = hint

    @property
    def message(self) -> str:
        """The reason and the hint as one line for a page or stderr."""
        return str(self)


class UsageError(GlassboxError):
    """The caller asked for something malformed (CLI exit code 2)."""


class InputRefused(GlassboxError):
    """An input was refused: unsafe, corrupt, incompatible or too large (exit 3)."""


class UnsafeFile(InputRefused):
    """Loading this file would (or could) execute code."""


class CorruptFile(InputRefused):
    """The file is truncated, empty or not the format it claims to be."""


class IncompatibleInput(InputRefused):
    """The file is well-formed but does not fit the model or the method."""


class TooLarge(InputRefused):
    """The file or the decoded data exceeds a configured limit."""


class Cancelled(GlassboxError):
    """A long computation was cancelled through its progress callback."""


class PermissionDenied(GlassboxError):
    """The signed-in user's role does not allow this action (CLI exit code 3, HTTP 403)."""


class NotFound(UsageError):
    """A workspace object (run, model, version, comment, user) that does not exist."""
