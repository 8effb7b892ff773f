"""Errors a user can cause, the one table of their CLI exit codes and HTTP statuses, and `one_line`.

Every error carries a one-line, user-facing ``reason`` (no traceback needed to
understand it) and, where useful, a ``hint`` saying what to do instead.
`CODES` maps each error class to its exit code (``cli.main``) and HTTP status
(``service.api``); `one_line` is the one way any failure becomes one line (CLI,
API, worker, report, loaders, pages).
"""
from __future__ import annotations

import re


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


class QueueFull(GlassboxError):
    """The owner already has as many queued or running jobs as allowed (HTTP 429)."""


#: error class -> (CLI exit code, HTTP status); `codes` takes the most specific class of an
#: exception's MRO, so a subclass not listed gets its parent's. Anything that is not a
#: GlassboxError (a model that raises, a bug) is ``Exception``'s row.
CODES: dict[type[BaseException], tuple[int, int]] = {
    UsageError: (2, 400),
    NotFound: (2, 404),
    InputRefused: (3, 422),
    PermissionDenied: (3, 403),
    QueueFull: (3, 429),
    GlassboxError: (3, 422),
    Exception: (3, 500),
}


def codes(exc: BaseException | type[BaseException]) -> tuple[int, int]:
    """``(exit code, HTTP status)`` of an exception (or class) from `CODES`."""
    cls = exc if isinstance(exc, type) else type(exc)
    return next((CODES[k] for k in cls.__mro__ if k in CODES), CODES[Exception])


def exit_code(exc: BaseException | type[BaseException]) -> int:
    return codes(exc)[0]


def http_status(exc: BaseException | type[BaseException]) -> int:
    return codes(exc)[1]


#: torch's first line of a RuntimeError raised inside a TorchScript graph; what went wrong is
#: the error's last line (after the TorchScript traceback).
TORCHSCRIPT_PREAMBLE = "The following operation failed in the TorchScript interpreter."
LIMIT = 300


def one_line(what: BaseException | str, limit: int = LIMIT, *, typed: bool = True) -> str:
    """Why something failed, in one line of at most ``limit`` characters.

    A GlassboxError gives its message; any other exception ``Type: message`` (only the
    message with ``typed=False``; the type's name when the message is empty); text is taken as
    it is. The line is the first non-empty one, except that a TorchScript interpreter's
    preamble is replaced by the error's last line, the real cause.
    """
    if isinstance(what, GlassboxError):
        text = what.message
    elif isinstance(what, BaseException):
        message = telling_line(str(what))
        text = (f"{type(what).__name__}: {message}" if typed else message) if message else type(what).__name__
        return _cut(text, limit)
    else:
        text = str(what)
    return _cut(telling_line(text), limit)


def telling_line(text: str) -> str:
    """The first non-empty line of ``text``, whitespace collapsed, with a TorchScript preamble
    replaced by the cause (the last ``SomethingError: ...`` line, its type dropped)."""
    lines = [" ".join(part.split()) for part in str(text).splitlines()]
    lines = [line for line in lines if line] or [""]
    first = lines[0]
    if TORCHSCRIPT_PREAMBLE in first and len(lines) > 1:
        cause = next((line for line in reversed(lines[1:]) if _TYPED.match(line)), lines[-1])
        first = first.replace(TORCHSCRIPT_PREAMBLE, _TYPED.sub("", cause, count=1)).strip()
    return first


_TYPED = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): ")


def _cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: max(limit - 1, 0)] + "…"
