"""Stopping the API without losing uploads.

On SIGTERM uvicorn closes its listening sockets (new connections are refused) and lets the requests in
flight finish, uploads whose body is still streaming included, for at most `SEGSERVE_SHUTDOWN_GRACE_S`
(uvicorn's `timeout_graceful_shutdown`, set by `segserve api`). When that runs out, uvicorn cancels the
requests still running. `ShutdownCancelled`, the outermost middleware, makes that end clean:

- a request cancelled before its response started is answered 503 `shutting_down` (problem+json)
  instead of uvicorn's bare 500; what it had written (its staging directory, an Idempotency-Key it held)
  is removed by the handlers' own cleanup on the way out;
- a request that has marked itself `finishing` (`mark_finishing`: its upload is in, it is storing and
  publishing the job, a matter of seconds) is not cancelled but awaited, so a client is never told 503
  about a job that was stored.

uvicorn does not wait for the requests it cancels: it goes straight on to the application's lifespan
shutdown, where `drain` waits (at most DRAIN_S) for them to have sent their answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import problem_response

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
DRAIN_S = 10.0
_FINISHING = "segserve.finishing"
_open_requests: set[asyncio.Future[None]] = set()


async def drain(timeout_s: float = DRAIN_S) -> int:
    """At lifespan shutdown: wait until every HTTP request has ended (answered, 503 included), at most
    `timeout_s`. Returns how many were still open at the end."""
    deadline = time.monotonic() + timeout_s
    while _open_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _open_requests:
        log.warning("%d request(s) still open at shutdown", len(_open_requests))
    return len(_open_requests)


def mark_finishing(scope: Scope) -> None:
    """Called by a handler whose remaining work must not be cut in half by the shutdown deadline."""
    scope[_FINISHING] = True


class ShutdownCancelled:
    """ASGI middleware: runs each HTTP request in a task of its own, so that the server's cancellation at
    the shutdown deadline reaches this middleware first, which then cancels the request (503) or, for a
    request that is finishing, waits for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        inner = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        _open_requests.add(inner)
        try:
            await self._run(scope, receive, send, inner, lambda: started)
        finally:
            _open_requests.discard(inner)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        inner: asyncio.Future[None],
        started: Callable[[], bool],
    ) -> None:
        cancelled = False
        while not inner.done():
            try:
                await asyncio.shield(inner)
            except asyncio.CancelledError:
                if inner.done():
                    break
                if scope.get(_FINISHING):
                    if not cancelled:
                        log.warning(
                            "%s %s: shutdown deadline; finishing the stored upload first", *_what(scope)
                        )
                    cancelled = True
                    continue
                cancelled = True
                inner.cancel()
                with suppress(asyncio.CancelledError):
                    await inner
        if not inner.cancelled():
            inner.result()  # the app's own exceptions go on as before
            return
        if started() or not cancelled:
            raise asyncio.CancelledError()
        log.warning("%s %s: ended by the shutdown deadline (503)", *_what(scope))
        response = problem_response(
            503,
            "the server is shutting down and could not finish this request in time; nothing of it was "
            "kept, send it again",
            code="shutting_down",
            instance=scope.get("path"),
            headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
        )
        await response(scope, receive, send)


def _what(scope: Scope) -> tuple[str, str]:
    return str(scope.get("method")), str(scope.get("path"))
