"""A request that finds every database connection busy gets 503 database_busy with Retry-After (a problem
document), not a 500: the pool's own timeout, from a real SQLAlchemy pool held by another request."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from segserve.db import POOL_MAX_OVERFLOW, POOL_SIZE
from service import problems


def test_exhausted_pool_is_a_503_problem(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    app = FastAPI()
    problems.install(app)

    @app.get("/busy")
    def busy() -> dict[str, int]:
        with engine.connect() as held, engine.connect() as second:  # the second waits, then times out
            return {
                "n": int(
                    held.execute(text("select 1")).scalar_one()
                    + second.execute(text("select 1")).scalar_one()
                )
            }

    response = TestClient(app, raise_server_exceptions=False).get("/busy")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "database_busy" and response.headers["retry-after"] == "5"


def test_pool_covers_the_apis_request_threads() -> None:
    import anyio.to_thread

    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    assert anyio.run(tokens) <= POOL_SIZE + POOL_MAX_OVERFLOW
