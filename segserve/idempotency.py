"""The Idempotency-Key store (draft-ietf-httpapi-idempotency-key-header): claim a key for a request, record
the answer once the request has created something, replay that answer to a retry.

Keys are scoped per API key (`key_id`). One row per (key_id, key) in `idempotency_keys`; the primary key
makes a claim exclusive across API processes on SQLite and PostgreSQL alike: of two processes inserting the
same key, one commit fails with an IntegrityError and that process then reads the winner's row.

    claim()      -> Claim (this request goes ahead) or StoredAnswer (replay it);
                    KeyReused (other fingerprint), KeyInUse (first request still processing)
    complete()   the request created something: keep its answer (in the caller's transaction, so that a
                 job row and its key are committed together)
    release()    the request failed: forget the claim, so the client may fix the request and retry

A row counts until `expires_at`: a processing row for `lock_s` (then its process is taken to be gone and
the key is free again), a completed row for `ttl_s`. Rows past it are deleted by the next claim.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segserve.db import IdempotencyRecord, utcnow

PROCESSING = "processing"
COMPLETED = "completed"


class IdempotencyConflict(Exception):
    """The key cannot be used for this request."""


class KeyReused(IdempotencyConflict):
    """The key was used for a request with another fingerprint (another body, path or model)."""


class KeyInUse(IdempotencyConflict):
    """The key's first request is still being processed (or this claim was taken over)."""


@dataclass(frozen=True)
class Claim:
    """This request holds the key; `token` tells this claim from a later one on the same key."""

    key_id: str
    key: str
    token: str


@dataclass(frozen=True)
class StoredAnswer:
    """The first request's answer: status code, media type, body (text) and the headers to send again."""

    status_code: int
    media_type: str
    body: str
    headers: list[tuple[str, str]]
    resource_id: str | None


def _live(session: Session, key_id: str, key: str, now: datetime) -> IdempotencyRecord | None:
    row = session.get(IdempotencyRecord, (key_id, key), populate_existing=True)
    return row if row is not None and row.expires_at > now else None


def _decide(row: IdempotencyRecord, fingerprint: str) -> StoredAnswer:
    if row.fingerprint != fingerprint:
        raise KeyReused(row.key_id)
    if row.state != COMPLETED or row.status_code is None:
        raise KeyInUse(row.key_id)
    return StoredAnswer(
        status_code=row.status_code,
        media_type=row.media_type or "application/json",
        body=row.response_body or "",
        headers=[(name, value) for name, value in row.response_headers],
        resource_id=row.resource_id,
    )


def claim(
    session: Session,
    key_id: str,
    key: str,
    fingerprint: str,
    *,
    lock_s: float,
    now: datetime | None = None,
) -> Claim | StoredAnswer:
    """Claim `key` of API key `key_id` for a request whose fingerprint is `fingerprint` (sha256 hex), or
    return the answer of the completed first request with that fingerprint. Commits.

    Raises:
        KeyReused: a live row holds another fingerprint.
        KeyInUse: a live row with this fingerprint is still processing.
    """
    now = now or utcnow()
    for _attempt in range(3):
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now))
        row = _live(session, key_id, key, now)
        if row is not None:
            session.commit()
            return _decide(row, fingerprint)
        token = uuid.uuid4().hex
        session.add(
            IdempotencyRecord(
                key_id=key_id,
                idempotency_key=key,
                fingerprint=fingerprint,
                state=PROCESSING,
                token=token,
                created_at=now,
                expires_at=now + timedelta(seconds=lock_s),
            )
        )
        try:
            session.commit()
        except IntegrityError:  # another process inserted the key first: read its row on the next round
            session.rollback()
            continue
        return Claim(key_id, key, token)
    raise KeyInUse(key_id)


def complete(
    session: Session,
    held: Claim,
    answer: StoredAnswer,
    *,
    ttl_s: float,
    now: datetime | None = None,
) -> None:
    """Record `answer` for the claimed key, to be replayed for `ttl_s` seconds. Does not commit: the caller
    commits it with what the request created.

    Raises:
        KeyInUse: the claim is no longer this request's (its lock ran out and another request took the key).
    """
    now = now or utcnow()
    done = session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.key_id == held.key_id,
            IdempotencyRecord.idempotency_key == held.key,
            IdempotencyRecord.token == held.token,
            IdempotencyRecord.state == PROCESSING,
        )
        .values(
            state=COMPLETED,
            status_code=answer.status_code,
            media_type=answer.media_type,
            response_body=answer.body,
            response_headers=[[name, value] for name, value in answer.headers],
            resource_id=answer.resource_id,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise KeyInUse(held.key_id)


def release(session: Session, held: Claim) -> None:
    """Forget a claim whose request failed (a completed key is kept). Commits."""
    session.execute(
        delete(IdempotencyRecord)
        .where(
            IdempotencyRecord.key_id == held.key_id,
            IdempotencyRecord.idempotency_key == held.key,
            IdempotencyRecord.token == held.token,
            IdempotencyRecord.state == PROCESSING,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
