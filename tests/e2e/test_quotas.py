"""Per-key limits on POST /v1/jobs over HTTP, with two API processes on one Redis and one database: the
queued-job limit and the request rate, each a 429 problem with Retry-After; and a queued job's place."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Proc, Stack, free_port, segserve, wait_for
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
MAX_QUEUED = 2
PER_MINUTE = 4


def _key(c: httpx.Client, name: str) -> str:
    resp = c.post("/v1/keys", json={"name": name, "role": "submitter"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def _post(base_url: str, key: str, image: Path | None) -> httpx.Response:
    files = {"image": image.open("rb")} if image else None
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        return c.post("/v1/jobs", data={"model": MODEL}, files=files)


def _assert_429(resp: httpx.Response, code: str, most_s: int) -> int:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code
    retry = int(resp.headers["retry-after"])
    assert 1 <= retry <= most_s and body["retry_after_s"] == retry
    return retry


def test_queued_limit_and_rate_limit_across_api_processes(tmp_path: Path) -> None:
    require_shared()
    env = {
        "SEGSERVE_REDIS_URL": redis_db(4),
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_MAX_QUEUED_JOBS_PER_KEY": str(MAX_QUEUED),
        "SEGSERVE_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE),
    }
    stack = Stack(tmp_path, env)
    second: Proc | None = None
    crop, _ = brain_crop(tmp_path, size=32)
    try:
        # No worker: accepted jobs stay queued.
        (tmp_path / "data").mkdir()
        stack.admin_key = json.loads(stack.cli("keys", "create", "--name", "a", "--role", "admin").stdout)[
            "key"
        ]
        stack.start_api()
        port = free_port()
        second = Proc("api2", segserve("api"), {**stack.env, "SEGSERVE_PORT": str(port)}, tmp_path)
        other_url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx.get(f"{other_url}/healthz", timeout=2).status_code == 200, 60, "the second API"
        )
        with stack.client() as admin:
            busy, quick = _key(admin, "busy"), _key(admin, "quick")
            bad = admin.post(
                "/v1/jobs", data={"model": MODEL, "priority": "urgent"}, files={"image": crop.open("rb")}
            )
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_priority", bad.text

        # Queued jobs: two are accepted (one per API), the third is refused by either API.
        first = _post(stack.base_url, busy, crop)
        second_job = _post(other_url, busy, crop)
        assert first.status_code == 202 and second_job.status_code == 202, (first.text, second_job.text)
        _assert_429(_post(other_url, busy, crop), "too_many_queued_jobs", most_s=60)
        with stack.client() as admin:
            waiting = admin.get(f"/v1/jobs/{second_job.json()['id']}").json()["waiting"]
            assert waiting["position"] == 2 and waiting["ahead"] == 1
            assert waiting["estimated_start"] is None and waiting["basis"] is None  # no run time known yet
            # Another key is not held back by this one's queue.
            assert (
                admin.post("/v1/jobs", data={"model": MODEL}, files={"image": crop.open("rb")}).status_code
                == 202
            )
            # Once one of them leaves the queue there is room again.
            assert admin.delete(f"/v1/jobs/{first.json()['id']}").status_code == 202
        assert _post(stack.base_url, busy, crop).status_code == 202  # busy's 4th request in this minute
        _assert_429(_post(other_url, busy, crop), "rate_limited", most_s=60)  # 5th: over the rate

        # The rate counts every request, wherever it lands: 4 go through (refused for their own reason:
        # not multipart, no image), the 5th is refused on the other API process.
        answers = [_post(url, quick, None).status_code for url in [stack.base_url, other_url] * 2]
        assert answers == [415] * PER_MINUTE
        _assert_429(_post(other_url, quick, None), "rate_limited", most_s=60)
        _assert_429(_post(stack.base_url, quick, None), "rate_limited", most_s=60)
    finally:
        if second is not None:
            second.stop()
        stack.stop()
