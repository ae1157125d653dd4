"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) over real HTTP: POST /v1/jobs on the real
stack (uvicorn, a Celery worker, Redis, SQLite) and STOW-RS on an API-only stack. A retry with the same key
and body gets the first answer and never a second job, also when the first connection dropped after the
upload; the same key with another body gets 422, a key whose first request is in progress 409, a
malformed key 400; keys are per API key; a request that failed leaves its key unused."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from segserve import idempotency as store
from segserve.db import IdempotencyRecord, new_session
from tests.conftest import fresh_postgres_database, redis_db
from tests.support.dicomweb import api_only_stack, ct_series, related_body, to_bytes
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, wait_for
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
CT_MODEL = "ct_idempotency_test"


def _new_key() -> str:
    return f"test-{uuid.uuid4()}"


def _job_request(stack: Stack, image: Path, key: str | None, api_key: str | None = None) -> httpx.Request:
    """A POST /v1/jobs request, built afresh (so with a new multipart boundary) each time."""
    headers = {"Authorization": f"Bearer {api_key or stack.admin_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    with httpx.Client(base_url=stack.base_url) as c:
        request = c.build_request(
            "POST", "/v1/jobs", headers=headers, data={"model": MODEL}, files={"image": image.read_bytes()}
        )
    request.read()
    return request


def _send(stack: Stack, request: httpx.Request) -> httpx.Response:
    with httpx.Client(base_url=stack.base_url, timeout=120) as c:
        return c.send(request)


def _submit(stack: Stack, image: Path, key: str | None, api_key: str | None = None) -> httpx.Response:
    return _send(stack, _job_request(stack, image, key, api_key))


def _total(stack: Stack) -> int:
    with stack.client() as c:
        return int(c.get("/v1/jobs", params={"limit": 1}).json()["total"])


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["detail"], body
    return body


def _staging_empty(stack: Stack) -> bool:
    """No request is receiving or validating an upload (each removes its staging folder when it ends)."""
    return not any((stack.tmp / "data" / "staging").glob("*"))


def _cancel(stack: Stack, *job_ids: str) -> None:
    """Spare the shared worker the jobs these tests made (they are never waited on)."""
    with stack.client() as c:
        for job_id in set(job_ids):
            c.delete(f"/v1/jobs/{job_id}")


@pytest.fixture
def scans(tmp_path: Path) -> tuple[Path, Path]:
    """Two different small scans (32³ and 36³ crops of subject-a)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return brain_crop(tmp_path / "a", size=32)[0], brain_crop(tmp_path / "b", size=36)[0]


def test_same_key_and_body_twice_gives_one_job(stack: Stack, scans: tuple[Path, Path]) -> None:
    key, before = _new_key(), _total(stack)
    first = _submit(stack, scans[0], key)
    assert first.status_code == 202, first.text
    again = _submit(stack, scans[0], key)  # a new request: another boundary, the same content
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert _total(stack) == before + 1
    _cancel(stack, first.json()["id"])


def _raw_send_and_drop(stack: Stack, request: httpx.Request, wait_until: Any = None) -> None:
    """Send the whole request over a socket of its own, then close it without reading the answer (after
    `wait_until()` is true, when given)."""
    head = [f"POST {request.url.raw_path.decode()} HTTP/1.1"]
    head += [f"{name}: {value}" for name, value in request.headers.items()]
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.content)
        if wait_until is not None:
            wait_for(wait_until, 60, "the first request's job")


@pytest.mark.parametrize("drop", ["after_the_job_exists", "at_once"])
def test_connection_dropped_after_upload_then_retry_gives_one_job(
    stack: Stack, scans: tuple[Path, Path], drop: str
) -> None:
    key, before = _new_key(), _total(stack)
    request = _job_request(stack, scans[0], key)
    _raw_send_and_drop(
        stack, request, (lambda: _total(stack) == before + 1) if drop == "after_the_job_exists" else None
    )

    def retried() -> httpx.Response | None:
        resp = _submit(stack, scans[0], key)
        if resp.status_code == 409:  # the first request is still being processed: retry, as the draft says
            _problem(resp, 409, "idempotency_key_in_use")
            return None
        return resp

    resp = wait_for(retried, 60, "an answer other than 409", interval=0.3)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: _staging_empty(stack), 60, "the first request to end")
    assert _total(stack) == before + 1
    with stack.client() as c:
        newest = c.get("/v1/jobs", params={"limit": 1}).json()["items"][0]
    assert newest["id"] == resp.json()["id"]
    assert _submit(stack, scans[0], key).json() == resp.json()
    if drop == "after_the_job_exists":  # the first request made the job; the retry only replays it
        assert resp.headers["idempotent-replayed"] == "true"
    _cancel(stack, resp.json()["id"])


def test_same_key_with_another_body_is_refused(stack: Stack, scans: tuple[Path, Path]) -> None:
    key, before = _new_key(), _total(stack)
    first = _submit(stack, scans[0], key)
    assert first.status_code == 202, first.text
    body = _problem(_submit(stack, scans[1], key), 422, "idempotency_key_reused")
    assert "Idempotency-Key" in body["detail"]
    assert _total(stack) == before + 1
    _cancel(stack, first.json()["id"])


def _record(stack: Stack, key: str) -> IdempotencyRecord:
    url = f"sqlite:///{stack.tmp / 'data' / 'segserve.db'}"
    with new_session(url) as s:
        (row,) = s.query(IdempotencyRecord).filter_by(idempotency_key=key).all()
        return row


def test_key_in_use_by_another_process_gets_409_then_works_once_released(
    stack: Stack, scans: tuple[Path, Path]
) -> None:
    """A first request in progress is made deterministic by claiming the key in the database, as another
    API process would, with the fingerprint the API computed for the same body."""
    done_key, busy_key, before = _new_key(), _new_key(), _total(stack)
    first = _submit(stack, scans[0], done_key)
    assert first.status_code == 202, first.text
    done = _record(stack, done_key)
    assert done.state == store.COMPLETED and done.resource_id == first.json()["id"]
    url = f"sqlite:///{stack.tmp / 'data' / 'segserve.db'}"
    with new_session(url) as s:
        held = store.claim(s, done.key_id, busy_key, done.fingerprint, lock_s=600)
    assert isinstance(held, store.Claim)

    resp = _submit(stack, scans[0], busy_key)
    _problem(resp, 409, "idempotency_key_in_use")
    assert resp.headers["retry-after"]
    assert _total(stack) == before + 1

    with new_session(url) as s:
        store.release(s, held)
    resp = _submit(stack, scans[0], busy_key)
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] != first.json()["id"] and _total(stack) == before + 2
    _cancel(stack, first.json()["id"], resp.json()["id"])


def test_keys_are_scoped_per_api_key(stack: Stack, scans: tuple[Path, Path]) -> None:
    with stack.client() as c:
        other = c.post("/v1/keys", json={"name": "idempotency submitter", "role": "submitter"}).json()["key"]
    key, before = _new_key(), _total(stack)
    mine = _submit(stack, scans[0], key)
    theirs = _submit(stack, scans[0], key, api_key=other)
    assert mine.status_code == theirs.status_code == 202, (mine.text, theirs.text)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    assert _submit(stack, scans[0], key, api_key=other).json()["id"] == theirs.json()["id"]
    assert _total(stack) == before + 2
    _cancel(stack, mine.json()["id"], theirs.json()["id"])


@pytest.mark.parametrize(
    "value",
    ["", '""', "x" * 256, '"' + "x" * 256 + '"', '"unterminated', '"a"b"', '"bad \\n escape"'],
    ids=["empty", "empty-quoted", "too-long", "too-long-quoted", "unterminated", "inner-quote", "escape"],
)
def test_malformed_key_is_400(stack: Stack, scans: tuple[Path, Path], value: str) -> None:
    before = _total(stack)
    _problem(_submit(stack, scans[0], value), 400, "bad_idempotency_key")
    assert _total(stack) == before


def test_longest_key_and_quoted_key_are_accepted_and_equal(stack: Stack, scans: tuple[Path, Path]) -> None:
    key = uuid.uuid4().hex + "y" * (255 - 32)
    first = _submit(stack, scans[0], key)
    assert first.status_code == 202, first.text
    assert _submit(stack, scans[0], f'"{key}"').json()["id"] == first.json()["id"]  # an sf-string, unquoted
    _cancel(stack, first.json()["id"])


def test_a_failed_first_request_leaves_the_key_unused(stack: Stack, scans: tuple[Path, Path]) -> None:
    key, before = _new_key(), _total(stack)
    with httpx.Client(base_url=stack.base_url, timeout=60) as c:
        bad = c.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {stack.admin_key}", "Idempotency-Key": key},
            data={"model": "no-such-model"},
            files={"image": scans[0].read_bytes()},
        )
    _problem(bad, 422, "unknown_model")
    fixed = _submit(stack, scans[0], key)  # the client fixed its request and retries with the same key
    assert fixed.status_code == 202, fixed.text
    assert _total(stack) == before + 1
    _cancel(stack, fixed.json()["id"])


@pytest.fixture(scope="module")
def stow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SEGSERVE_DICOMWEB_QUIET_S": "3600"}  # series stay open: what the API stored stays visible
    with api_only_stack(tmp_path_factory.mktemp("idem-stow"), env, CT_MODEL) as api:
        yield api


def _stow(api: Stack, key: str | None, parts: list[bytes]) -> httpx.Response:
    body, content_type = related_body(parts)  # a new boundary each time
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    with api.client() as c:
        return c.post(f"/dicomweb/{CT_MODEL}/studies", content=body, headers=headers)


def test_stow_with_the_same_key_twice_stores_the_series_once(stow_api: Stack) -> None:
    series = ct_series(compress=False)
    parts = [to_bytes(ds) for ds in series]
    key = _new_key()
    first = _stow(stow_api, key, parts)
    assert first.status_code == 200, first.text
    with stow_api.client() as c:
        (row,) = [
            i
            for i in c.get("/v1/intake").json()["items"]
            if i["series_instance_uid"] == series[0].SeriesInstanceUID
        ]
    assert row["instance_count"] == 3
    time.sleep(0.05)  # a stored instance would move last_received_at on
    again = _stow(stow_api, key, parts)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    with stow_api.client() as c:
        (after,) = [
            i
            for i in c.get("/v1/intake").json()["items"]
            if i["series_instance_uid"] == series[0].SeriesInstanceUID
        ]
        events = c.get("/v1/audit", params={"action": "POST /dicomweb/{model}/studies"}).json()["items"]
    assert after == row  # the replay stored nothing and did not restart the series' quiet period
    assert len([e for e in events if e["resource_id"] == row["id"]]) == 1
    _problem(_stow(stow_api, key, parts[:2]), 422, "idempotency_key_reused")


def test_stow_that_stored_nothing_leaves_the_key_unused(stow_api: Stack) -> None:
    key = _new_key()
    refused = _stow(stow_api, key, [b"not a DICOM file"])
    assert refused.status_code == 409 and refused.headers["content-type"].startswith("application/dicom+json")
    series = ct_series(compress=False)
    stored = _stow(stow_api, key, [to_bytes(ds) for ds in series])  # fixed, same key
    assert stored.status_code == 200, stored.text
    assert "idempotent-replayed" not in stored.headers


@pytest.fixture(scope="module")
def two_apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two API processes (no worker) over one fresh PostgreSQL database and one data directory, as in a
    deployment with several API machines."""
    require_shared()
    tmp = tmp_path_factory.mktemp("idem-pg")
    with fresh_postgres_database("segserve_idem") as url:
        env = {
            "SEGSERVE_REDIS_URL": redis_db(8),
            "SEGSERVE_DATABASE_URL": url,
            "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        }
        first, second = Stack(tmp, env), Stack(tmp, env)
        (tmp / "data").mkdir()
        first.admin_key = json.loads(first.cli("keys", "create", "--name", "a", "--role", "admin").stdout)[
            "key"
        ]
        second.admin_key = first.admin_key
        try:
            first.start_api()
            second.start_api()
            yield first, second
        finally:
            first.stop()
            second.stop()


def test_two_api_processes_on_postgres_make_one_job_per_key(
    two_apis: tuple[Stack, Stack], scans: tuple[Path, Path]
) -> None:
    """The same request sent at once to two API processes, for three keys: each key makes one job, and
    every answer (after retrying 409s) names it."""
    keys = [_new_key() for _ in range(3)]
    before = _total(two_apis[0])
    with ThreadPoolExecutor(max_workers=2) as pool:
        for key in keys:
            one, other = pool.map(_until_not_409, two_apis, [scans[0]] * 2, [key] * 2)
            assert one.status_code == other.status_code == 202, (key, one.text, other.text)
            assert one.json()["id"] == other.json()["id"]
            assert ("idempotent-replayed" in one.headers) != ("idempotent-replayed" in other.headers)
    assert _total(two_apis[0]) == _total(two_apis[1]) == before + len(keys)


def _until_not_409(api: Stack, image: Path, key: str) -> httpx.Response:
    def answered() -> httpx.Response | None:
        resp = _submit(api, image, key)
        return None if resp.status_code == 409 else resp

    return wait_for(answered, 60, "an answer other than 409", interval=0.2)  # type: ignore[no-any-return]
