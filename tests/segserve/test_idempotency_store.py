"""The Idempotency-Key store against SQLite and PostgreSQL: one claimant per key across concurrent
processes' sessions, replay of a completed answer, 422/409 cases, release, scoping per API key, expiry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from segserve import idempotency as store
from segserve.db import IdempotencyRecord, init_db, new_session, utcnow

FP_A, FP_B = "a" * 64, "b" * 64
ANSWER = store.StoredAnswer(202, "application/json", '{"id": "j1"}', [("Location", "/v1/jobs/j1")], "j1")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'idem.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        init_db(url)
        with new_session(url) as s:  # the session-wide database: start from no keys
            s.query(IdempotencyRecord).delete()
            s.commit()
    init_db(url)
    yield url


def _claim(url: str, key_id: str, key: str, fp: str, **kw: object) -> store.Claim | store.StoredAnswer:
    with new_session(url) as s:
        return store.claim(s, key_id, key, fp, lock_s=60, **kw)  # type: ignore[arg-type]


def _complete(url: str, held: store.Claim, ttl_s: float = 3600) -> None:
    with new_session(url) as s:
        store.complete(s, held, ANSWER, ttl_s=ttl_s)
        s.commit()


def test_claim_in_use_complete_replay_and_reuse(db_url: str) -> None:
    held = _claim(db_url, "k1", "key-1", FP_A)
    assert isinstance(held, store.Claim)
    with pytest.raises(store.KeyInUse):
        _claim(db_url, "k1", "key-1", FP_A)
    with pytest.raises(store.KeyReused):
        _claim(db_url, "k1", "key-1", FP_B)
    _complete(db_url, held)
    assert _claim(db_url, "k1", "key-1", FP_A) == ANSWER
    with pytest.raises(store.KeyReused):
        _claim(db_url, "k1", "key-1", FP_B)
    # another API key, same Idempotency-Key: independent
    assert isinstance(_claim(db_url, "k2", "key-1", FP_B), store.Claim)


def test_release_frees_the_key_and_a_released_claim_cannot_complete(db_url: str) -> None:
    held = _claim(db_url, "k1", "key-2", FP_A)
    assert isinstance(held, store.Claim)
    with new_session(db_url) as s:
        store.release(s, held)
    again = _claim(db_url, "k1", "key-2", FP_B)  # the failed request left the key unused
    assert isinstance(again, store.Claim)
    with pytest.raises(store.KeyInUse):
        _complete(db_url, held)  # the old claim's token is gone
    _complete(db_url, again)
    with new_session(db_url) as s:
        store.release(s, again)  # a completed key is never released
    assert _claim(db_url, "k1", "key-2", FP_B) == ANSWER


def test_expired_keys_and_abandoned_claims_are_free_again(db_url: str) -> None:
    now = utcnow()
    held = _claim(db_url, "k1", "key-3", FP_A, now=now)
    assert isinstance(held, store.Claim)
    with pytest.raises(store.KeyInUse):
        _claim(db_url, "k1", "key-3", FP_A, now=now + timedelta(seconds=59))
    # the lock (60 s) ran out: the first request's process is taken to be gone
    taken = _claim(db_url, "k1", "key-3", FP_A, now=now + timedelta(seconds=61))
    assert isinstance(taken, store.Claim) and taken.token != held.token
    with pytest.raises(store.KeyInUse):
        _complete(db_url, held)
    with new_session(db_url) as s:
        store.complete(s, taken, ANSWER, ttl_s=100, now=now + timedelta(seconds=61))
        s.commit()
    with pytest.raises(store.KeyReused):
        _claim(db_url, "k1", "key-3", FP_B, now=now + timedelta(seconds=150))
    # within the TTL the answer is replayed; after it the key is new
    assert _claim(db_url, "k1", "key-3", FP_A, now=now + timedelta(seconds=160)) == ANSWER
    fresh = _claim(db_url, "k1", "key-3", FP_B, now=now + timedelta(seconds=162))
    assert isinstance(fresh, store.Claim)


def test_concurrent_claims_have_exactly_one_winner(db_url: str) -> None:
    results: list[object] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        try:
            results.append(_claim(db_url, "k1", "key-4", FP_A))
        except store.KeyInUse as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 6
    assert sum(isinstance(r, store.Claim) for r in results) == 1
    assert sum(isinstance(r, store.KeyInUse) for r in results) == 5
