"""Feeding a streamed multipart body to python-multipart's parser: shared by form uploads (POST /v1/jobs)
and STOW-RS (multipart/related), which differ only in what their collectors do with the parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from python_multipart.multipart import MultipartParser, MultipartState

from service.problems import Problem

_CALLBACKS = (
    "on_part_begin",
    "on_part_data",
    "on_part_end",
    "on_header_field",
    "on_header_value",
    "on_header_end",
    "on_headers_finished",
)


class PartCollector(Protocol):
    """Has python-multipart's callbacks as methods (`on_part_begin`, ...), and `close` for its open file."""

    def close(self) -> None: ...


def _both(first: Callable[..., None], then: Callable[..., None]) -> Callable[..., None]:
    def call(*args: Any) -> None:
        first(*args)
        then(*args)

    return call


async def feed_multipart(
    collector: PartCollector,
    boundary: bytes,
    body: AsyncIterator[bytes],
    kind: str,
    observer: PartCollector | None = None,
) -> None:
    """Parse `body` chunk by chunk into `collector`, then close it. An `observer` (e.g. the request's
    Idempotency-Key fingerprint) gets every callback too, after the collector.

    Raises:
        Problem 400 (bad_multipart) naming `kind` (e.g. "multipart/related") for a malformed or truncated
        body; Problems raised by the collector (413, ...) pass through unchanged.
    """
    callbacks = {name: getattr(collector, name) for name in _CALLBACKS}
    if observer is not None:
        callbacks = {name: _both(call, getattr(observer, name)) for name, call in callbacks.items()}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except Problem:
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        raise Problem(400, f"malformed {kind} body: {exc}", code="bad_multipart") from None
    finally:
        collector.close()
    if parser.state != MultipartState.END:  # python-multipart's finalize() does not check this itself
        raise Problem(
            400, f"the {kind} body ends before its closing boundary (truncated?)", code="bad_multipart"
        )
