"""ShutdownCancelled, driven as uvicorn drives it at the graceful-shutdown deadline: the request's task is
cancelled and the lifespan shutdown (`drain`) follows at once."""

from __future__ import annotations

import asyncio
import json

from starlette.types import Message, Receive, Scope, Send

from service.shutdown import ShutdownCancelled, drain, mark_finishing

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": []}


def _app(finishing: bool, cleaned: list[str]) -> ShutdownCancelled:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(0.2)  # the body arrives
            if finishing:
                mark_finishing(scope)
            await asyncio.sleep(0.5)  # storing the job
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b'{"id": "j"}'})
        except asyncio.CancelledError:
            cleaned.append("staging removed")
            raise

    return ShutdownCancelled(app)


async def _cancelled_at(
    delay_s: float, finishing: bool
) -> tuple[list[Message], list[str], asyncio.Task[None]]:
    sent: list[Message] = []
    cleaned: list[str] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.ensure_future(_app(finishing, cleaned)(dict(SCOPE), receive, send))
    await asyncio.sleep(delay_s)
    task.cancel()  # uvicorn: "Cancel 1 running task(s), timeout graceful shutdown exceeded"
    assert await drain(timeout_s=5) == 0
    return sent, cleaned, task


def test_a_request_cancelled_while_receiving_gets_503_and_cleans_up() -> None:
    sent, cleaned, task = asyncio.run(_cancelled_at(0.1, finishing=True))
    assert cleaned == ["staging removed"]
    assert sent[0]["status"] == 503
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"5"
    assert json.loads(sent[1]["body"])["code"] == "shutting_down"
    assert task.done() and not task.cancelled()


def test_a_request_cancelled_while_finishing_is_awaited_and_answers_202() -> None:
    sent, cleaned, _task = asyncio.run(_cancelled_at(0.4, finishing=True))
    assert cleaned == []
    assert [m.get("status") for m in sent] == [202, None]


def test_an_unmarked_request_past_its_body_is_still_cancelled() -> None:
    sent, cleaned, _task = asyncio.run(_cancelled_at(0.4, finishing=False))
    assert cleaned == ["staging removed"] and sent[0]["status"] == 503
