"""The per-key rate limit (service.quotas.check_rate) on the embedded broker's unix socket, which `segserve
up` hands the API as a `redis+socket://` URL, and with no Redis answering at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from segserve.broker import EmbeddedRedis
from segserve.config import Settings
from segserve.db import ApiKey
from service.problems import Problem
from service.quotas import check_rate, limits_uri
from tests.support.stack import free_port


def _key(key_id: str) -> ApiKey:
    return ApiKey(id=key_id, name=key_id, role="submitter", key_hash=key_id * 4)


def test_the_rate_is_counted_per_key_on_the_embedded_broker(tmp_path: Path) -> None:
    broker = EmbeddedRedis(tmp_path / "broker")
    broker.start()
    try:
        assert broker.url.startswith("redis+socket://")
        assert limits_uri(broker.url) == broker.url.replace("redis+socket://", "redis+unix://", 1)
        settings = Settings(data_dir=tmp_path, redis_url=broker.url, rate_limit_per_minute=2)
        check_rate(settings, _key("a"))
        check_rate(settings, _key("a"))
        check_rate(settings, _key("b"))  # another key has its own window
        with pytest.raises(Problem) as refused:
            check_rate(settings, _key("a"))
        assert refused.value.status == 429 and refused.value.code == "rate_limited"
        assert refused.value.headers is not None and 1 <= int(refused.value.headers["Retry-After"]) <= 60
    finally:
        broker.stop()


def test_no_redis_answering_lets_requests_through(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_per_minute=1
    )
    for _ in range(3):
        check_rate(settings, _key("a"))
