"""Per-key limits on POST /v1/jobs: a request rate and a number of queued jobs. Beyond either: 429 with
`Retry-After` (seconds).

The rate is a moving 60 s window kept in Redis (the broker's server, under the broker key prefix) by the
`limits` library, so every API process counts against the same window. The queued count comes from the
database. A broker that does not answer lets the request through (logged): publishing would fail the same
way and the job would still be accepted and published later by recovery.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from functools import lru_cache

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from segserve.config import Settings
from segserve.db import ApiKey, new_session, utcnow
from segserve.queue_wait import first_start, queued_count
from service.problems import Problem

log = logging.getLogger(__name__)
NO_ESTIMATE_RETRY_S = 60  # Retry-After for a full queue when no run time is known yet
_SCOPE = "jobs-post"


def limits_uri(redis_url: str) -> str:
    """The broker URL in the form `limits` reads: kombu's `redis+socket://` is `redis+unix://` there."""
    if redis_url.startswith("redis+socket://"):
        return "redis+unix://" + redis_url.removeprefix("redis+socket://")
    return redis_url


@lru_cache(maxsize=4)
def _limiter(uri: str, key_prefix: str) -> MovingWindowRateLimiter:
    storage = RedisStorage(uri, key_prefix=key_prefix, socket_connect_timeout=2, socket_timeout=2)
    return MovingWindowRateLimiter(storage)


def check_rate(settings: Settings, key: ApiKey) -> None:
    """Count one POST /v1/jobs for `key`; 429 when it is over SEGSERVE_RATE_LIMIT_PER_MINUTE."""
    if settings.rate_limit_per_minute is None or not settings.redis_url:
        return
    item = RateLimitItemPerMinute(settings.rate_limit_per_minute)
    limiter = _limiter(limits_uri(settings.redis_url), f"{settings.broker_key_prefix}segserve-rate")
    try:
        if limiter.hit(item, _SCOPE, key.id):
            return
        reset_at = limiter.get_window_stats(item, _SCOPE, key.id).reset_time
    except (RedisError, StorageError, OSError):
        log.warning("rate limit not checked: the broker's Redis did not answer", exc_info=True)
        return
    retry_s = max(1, math.ceil(reset_at - time.time()))
    raise Problem(
        429,
        f"more than {settings.rate_limit_per_minute} job submissions in 60 s from this key; "
        f"retry in {retry_s} s",
        code="rate_limited",
        headers={"Retry-After": str(retry_s)},
        retry_after_s=retry_s,
    )


def check_queued(settings: Settings, key: ApiKey) -> None:
    """429 when `key` already holds SEGSERVE_MAX_QUEUED_JOBS_PER_KEY queued jobs. Retry-After is the
    estimated start of its next job (when one place frees), or 60 s without an estimate."""
    limit = settings.max_queued_jobs_per_key
    if limit is None:
        return
    with new_session(settings.resolved_database_url) as session:
        held = queued_count(session, key.id)
        if held < limit:
            return
        now = utcnow()
        start = first_start(session, key.id, runs=settings.estimate_runs, now=now)
    wait = (start - now) if start is not None else timedelta(seconds=NO_ESTIMATE_RETRY_S)
    retry_s = max(1, math.ceil(wait.total_seconds()))
    raise Problem(
        429,
        f"this key has {held} queued job(s), the limit is {limit}; retry once one has started "
        f"(in about {retry_s} s)",
        code="too_many_queued_jobs",
        headers={"Retry-After": str(retry_s)},
        retry_after_s=retry_s,
        queued=held,
        limit=limit,
    )
