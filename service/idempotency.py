"""The Idempotency-Key request header (draft-ietf-httpapi-idempotency-key-header) for POST /v1/jobs and
STOW-RS: reading the header, the request's fingerprint, and the key's store (segserve.idempotency) as
Problems and responses.

- The header is a Structured Field string (`Idempotency-Key: "8e03978e-40d5"`); an unquoted value of
  visible ASCII characters is taken as it is. Empty, longer than 255 characters, other characters, or the
  header twice: 400 `bad_idempotency_key`.
- The fingerprint is the sha256 of the method, the path, the query and the body's parts (their headers and
  content), computed while the body streams to disk. The multipart boundary is not part of it, so a client
  that makes a new boundary for its retry sends the same request.
- Policy: a key is recorded only when its request created something (a job; STOW-RS instances stored, 200
  or 202). A request that fails (4xx, 5xx, or the connection dropped before the upload was whole) leaves
  the key unused, so the client may fix the request and retry with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from segserve import idempotency as store
from segserve.config import Settings
from segserve.db import new_session
from service.problems import Problem

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255

OPENAPI_PARAMETER: dict[str, object] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "Makes a retry safe: the same key with the same request (per API key) returns the first "
    "answer again (Idempotent-Replayed: true); with another request 422, while the first is in progress 409.",
}


def _bad(detail: str) -> Problem:
    return Problem(400, f"{HEADER}: {detail}", code="bad_idempotency_key")


def _unquote(value: str) -> str:
    """The content of a Structured Field string (RFC 8941 3.3.3): `"..."` with `\\"` and `\\\\` escapes."""
    if len(value) < 2 or not value.endswith('"'):
        raise _bad('a quoted key must end with "')
    out: list[str] = []
    chars = iter(value[1:-1])
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in ('"', "\\"):
                raise _bad('only \\" and \\\\ may be escaped in a quoted key')
            out.append(escaped)
        elif char == '"':
            raise _bad('a " inside a quoted key must be escaped')
        else:
            out.append(char)
    return "".join(out)


def request_key(request: Request) -> str | None:
    """The request's Idempotency-Key, None without the header; Problem 400 when it is malformed."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise _bad("send the header once")
    raw = values[0].strip()
    if not raw.isascii() or any(not (" " <= c <= "~") for c in raw):
        raise _bad("only printable ASCII characters are allowed")
    key = _unquote(raw) if raw.startswith('"') else raw
    if not key:
        raise _bad("the key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise _bad(f"the key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed")
    if not raw.startswith('"') and " " in key:
        raise _bad("a key with spaces must be quoted")
    return key


class PartDigest:
    """sha256 over a request's method, path and query and its multipart body's parts, independent of the
    boundary and of how the body was chunked: per part its headers (names lower-cased, sorted) and its
    content, each length-framed. Fed as an observer by service.multipart_feed, so nothing is held."""

    def __init__(self, method: str, path: str, query: str = "") -> None:
        self._hash = hashlib.sha256(b"segserve-idempotency-v1\0")
        for text in (method, path, query):
            self._framed(text.encode())
        self._header_name = b""
        self._header_value = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0

    @classmethod
    def of(cls, request: Request) -> PartDigest:
        return cls(request.method, request.url.path, str(request.url.query))

    def _framed(self, data: bytes) -> None:
        self._hash.update(len(data).to_bytes(8, "big") + data)

    def on_part_begin(self) -> None:
        self._headers, self._size = [], 0
        self._hash.update(b"P")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._header_name.strip().lower(), self._header_value.strip()))
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        for name, value in sorted(self._headers):
            self._framed(name)
            self._framed(value)
        self._hash.update(b"D")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._hash.update(data[start:end])
        self._size += end - start

    def on_part_end(self) -> None:
        self._hash.update(b"E" + self._size.to_bytes(8, "big"))

    def close(self) -> None:
        """Nothing to close (the PartCollector protocol)."""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _claim(settings: Settings, key_id: str, key: str, fingerprint: str) -> store.Claim | store.StoredAnswer:
    with new_session(settings.resolved_database_url) as session:
        return store.claim(session, key_id, key, fingerprint, lock_s=settings.idempotency_lock_s)


def conflict_problem(exc: store.IdempotencyConflict) -> Problem:
    """The draft's answers: 422 for a key reused with another request, 409 while its first is in progress."""
    if isinstance(exc, store.KeyReused):
        return Problem(
            422,
            f"this {HEADER} was already used for a different request (other body, path or model); "
            "use a new key for a new request",
            code="idempotency_key_reused",
        )
    return Problem(
        409,
        f"the first request with this {HEADER} is still being processed; retry later",
        code="idempotency_key_in_use",
        headers={"Retry-After": "1"},
    )


async def begin(
    settings: Settings, key_id: str, key: str, digest: PartDigest
) -> store.Claim | store.StoredAnswer:
    """Claim `key` for this request (whose body has been read into `digest`), or the answer to replay.
    Problem 422 / 409 as `conflict_problem` says."""
    try:
        return await run_in_threadpool(_claim, settings, key_id, key, digest.hexdigest())
    except store.IdempotencyConflict as exc:
        raise conflict_problem(exc) from None


def _release(settings: Settings, held: store.Claim) -> None:
    with new_session(settings.resolved_database_url) as session:
        store.release(session, held)


@asynccontextmanager
async def released_on_error(settings: Settings, held: store.Claim | None) -> AsyncIterator[None]:
    """Leave the key unused when the block fails (a Problem, an error, or a cancelled request)."""
    try:
        yield
    except Exception:
        if held is not None:
            await run_in_threadpool(_release, settings, held)
        raise
    except BaseException:  # cancelled: no more awaiting here; a short blocking delete
        if held is not None:
            _release(settings, held)
        raise


async def release(settings: Settings, held: store.Claim) -> None:
    await run_in_threadpool(_release, settings, held)


def complete_in(session: Session, settings: Settings, held: store.Claim, answer: store.StoredAnswer) -> None:
    """Record `answer` in `session`'s transaction (committed by the caller); Problem 409 if the claim was
    taken over meanwhile (the caller's transaction must then be rolled back)."""
    try:
        store.complete(session, held, answer, ttl_s=settings.idempotency_ttl_s)
    except store.KeyInUse as exc:
        raise conflict_problem(exc) from None


def _complete(settings: Settings, held: store.Claim, answer: store.StoredAnswer) -> None:
    with new_session(settings.resolved_database_url) as session:
        complete_in(session, settings, held, answer)
        session.commit()


async def complete(settings: Settings, held: store.Claim, answer: store.StoredAnswer) -> None:
    """Record `answer` in a transaction of its own."""
    await run_in_threadpool(_complete, settings, held, answer)


def answer_of(response: Response, resource_id: str | None = None) -> store.StoredAnswer:
    """What to keep of a response built in full (JSONResponse): status, media type, body, and the headers
    a replay repeats (Location, Warning)."""
    headers = [(n, v) for n, v in response.headers.items() if n.lower() in ("location", "warning")]
    return store.StoredAnswer(
        status_code=response.status_code,
        media_type=response.media_type or "application/json",
        body=bytes(response.body).decode("utf-8"),
        headers=headers,
        resource_id=resource_id,
    )


def replay(answer: store.StoredAnswer) -> Response:
    """The first request's answer again, marked `Idempotent-Replayed: true`."""
    response = Response(answer.body, status_code=answer.status_code, media_type=answer.media_type)
    for name, value in answer.headers:
        response.headers.append(name, value)
    response.headers[REPLAYED_HEADER] = "true"
    return response
