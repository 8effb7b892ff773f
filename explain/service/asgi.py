"""The API's ASGI layer around FastAPI (`explain.service.api`): who asks and how much they send
(`Gate`, outermost), and every failure as one line (`OneLineErrors`, `error_response`, `ApiError`).

Pure ASGI, not ``@app.middleware``: that one runs every request in a task group of its own (~0.1 ms a
request, issue 23).
"""
from __future__ import annotations

import logging
import time

import anyio
from fastapi.responses import JSONResponse

from explain.errors import http_status, one_line

log = logging.getLogger("glassbox.api")
#: the longest a request's body may take to arrive whole (`Gate`), seconds
BODY_SECONDS = 60.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message) or "error"}, status_code=status, headers=headers)


class _Budget:
    """Request body bytes held across all requests in flight, and by each token's (at most ``share``:
    one token's slow bodies cannot hold the whole budget while everyone else gets 503). Only the event
    loop touches it (the middleware is async), so no lock is needed."""

    def __init__(self, total: int, share: int | None = None):
        self.total = total
        self.share = total if share is None else share
        self.used = 0
        self.held: dict[str, int] = {}

    def take(self, n: int, who: str = "") -> bool:
        if self.used + n > self.total or self.held.get(who, 0) + n > self.share:
            return False
        self.used += n
        self.held[who] = self.held.get(who, 0) + n
        return True

    def give(self, n: int, who: str = "") -> None:
        self.used = max(0, self.used - n)
        left = self.held.pop(who, 0) - n
        if left > 0:
            self.held[who] = left


def _first_header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value
    return None


class Gate:
    """Pure ASGI middleware in front of everything: who asks, then how much they send.

    1. The bearer token is checked (`Lookups.identity_soon`: the workspace's stamp read after the request
       came, in a thread, one read for the requests waiting together) from the headers alone,
       before a byte of the body is read: no token, a wrong one, 401 and the connection closed
       (only ``GET`` of the OpenAPI document and the docs pages go through without one).
    2. The body is read up to ``limit`` bytes (413 above it, declared or streamed), and every byte
       held counts against ``budget``, shared by all requests in flight, of which one token's hold
       at most ``limit``: a body that does not fit gets 503 (a declared ``Content-Length`` is
       reserved whole before reading). A body not whole within ``body_seconds`` gets 408 (one sent
       a byte at a time holds its reservation no longer).
    The known caller's token name, and the workspace stamp it was checked under and when, go on to
    the routes in ``scope["state"]``, and so does the body, read whole (``glassbox_body``).
    """

    def __init__(self, app, *, identify, limit: int, budget: int, public: frozenset[str] = frozenset(),
                 body_seconds: float = BODY_SECONDS, identify_soon=None):
        self.app = app
        self.identify = identify  # token -> `lookups.Identity` | None; blocking (the database)
        # the same, awaited in the event loop (`Lookups.identity_soon`); without it, `identify` in a thread
        self.identify_soon = identify_soon or (lambda token: anyio.to_thread.run_sync(self.identify, token))
        self.limit = limit
        self.budget = _Budget(budget, share=limit)
        self.public = public
        self.body_seconds = body_seconds

    @staticmethod
    async def _refuse(status: int, message: str, scope, receive, send, retry: bool = False) -> None:
        response = error_response(status, message)
        response.headers["connection"] = "close"  # the unread body is not waited for
        if retry:
            response.headers["retry-after"] = "1"
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and scope["path"] in self.public:
            return await self.app(scope, receive, send)  # the docs read no body
        auth = _first_header(scope, b"authorization")
        scheme, _, token = (auth or b"").decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return await self._refuse(401, "Missing token: send Authorization: Bearer <token>.", scope, receive, send)
        checked = time.monotonic()  # no later than its stamp was read
        try:
            found = await self.identify_soon(token)
        except Exception as exc:
            log.exception("API token check failed")
            return await self._refuse(500, f"The token could not be checked ({type(exc).__name__}).",
                                      scope, receive, send)
        if found is None:
            return await self._refuse(401, "Unknown token.", scope, receive, send)
        state = scope.setdefault("state", {})
        state["glassbox_token"], state["glassbox_stamp"] = found.name, found.stamp  # `Lookups.identity`
        state["glassbox_checked"] = checked  # the stamp stands `lookups.STAMP_STANDS_S` from then

        declared = _first_header(scope, b"content-length")
        reserved, who = 0, found.name
        if declared is not None and declared.isdigit():
            reserved = int(declared)
            if reserved > self.limit:
                return await self._refuse(413, f"The request body is over {self.limit} bytes.", scope, receive, send)
            if not self.budget.take(reserved, who):
                reserved = 0
                return await self._busy(scope, receive, send)
        try:
            chunks, size, more = [], 0, True  # read it all first (it is capped), then hand it on
            with anyio.move_on_after(self.body_seconds):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        break
                    if size > reserved:
                        if not self.budget.take(size - reserved, who):
                            break
                        reserved = size
                    if chunk:
                        chunks.append(chunk)
                    more = message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(413, f"The request body is over {self.limit} bytes.", scope, receive, send)
            if size > reserved:
                return await self._busy(scope, receive, send)
            if more:
                return await self._refuse(408, f"The request body did not arrive within {self.body_seconds:g} s.",
                                          scope, receive, send)
            body = b"".join(chunks)
            chunks.clear()
            state["glassbox_body"] = body  # the routes that read it whole (`:predict`, `:explain`) take it here
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)
        finally:
            self.budget.give(reserved, who)

    async def _busy(self, scope, receive, send) -> None:
        await self._refuse(503, f"The server holds as many request bytes as it may ({self.budget.total} bytes in "
                                f"flight); try again in a moment.", scope, receive, send, retry=True)


class OneLineErrors:
    """Pure ASGI middleware: an exception no handler answered (a bug, a model that raised) becomes
    one line, logged server-side, never a traceback. (Pure ASGI, not ``@app.middleware``: that one
    runs every request in a task group of its own, ~0.1 ms a request.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if isinstance(exc, ApiError):
                response = error_response(exc.status, exc.message, exc.headers)
            else:  # a bug or a model that raised: one line, logged server-side
                log.exception("API request failed")
                response = error_response(http_status(exc), f"The request failed ({one_line(exc)}).")
            if started:  # the answer is on its way already: nothing more can be said
                raise
            await response(scope, receive, send)


class ActionRoutes:
    """Pure ASGI, inside `Gate` and `OneLineErrors`: ``POST /v1/models/{name}:{action}`` of the actions in
    ``routes`` straight to their endpoints, ``endpoint(name, request) -> Response``, past FastAPI's router,
    exception middleware and dependency solving (~40 % of a 1-row ``:predict``'s CPU in the server, issue
    23). Their exceptions are answered by the app's own ``handlers`` (`FastAPI.exception_handlers`, found
    by the exception's class as Starlette finds them); any other request, or verb, goes on to the app
    (which keeps the routes for its OpenAPI document and answers ``GET …:predict`` with 405).

    ``routes`` may be filled after the middleware is added (the endpoints are defined later)."""

    PREFIX = "/v1/models/"

    def __init__(self, app, *, routes: dict, handlers: dict):
        self.app = app
        self.routes = routes
        self.handlers = handlers

    def _endpoint(self, scope) -> tuple | None:
        """(endpoint, name) for a request this takes, else None."""
        path = scope["path"]
        if scope["method"] != "POST" or scope.get("root_path") or not path.startswith(self.PREFIX):
            return None
        name, colon, action = path[len(self.PREFIX):].rpartition(":")
        endpoint = self.routes.get(action) if colon else None
        if endpoint is None or not name or "/" in name:  # as FastAPI's ``{name}``: one path segment
            return None
        return endpoint, name

    async def __call__(self, scope, receive, send):
        found = self._endpoint(scope) if scope["type"] == "http" else None
        if found is None:
            return await self.app(scope, receive, send)
        from starlette.requests import Request

        endpoint, name = found
        request = Request(scope, receive)
        try:
            response = await endpoint(name, request)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
            if handler is None:  # `OneLineErrors` answers it
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
