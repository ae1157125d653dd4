"""The request fingerprint of an Idempotency-Key (service.idempotency.PartDigest), fed by the real form
parser: the same content gives the same digest whatever the boundary and chunking; any change of a part's
content, name or file name, or of the path, gives another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.idempotency import PartDigest
from service.uploads import receive_form


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _digest(
    tmp: Path,
    *,
    model: str = "m",
    name: str = "scan.nii.gz",
    content: bytes = b"z" * 3000,
    chunk: int = 64,
    path: str = "/v1/jobs",
) -> str:
    request = httpx.Request(
        "POST", f"http://x{path}", data={"model": model}, files={"image": (name, content)}
    )
    digest = PartDigest("POST", path)
    root = tmp / f"{len(list(tmp.iterdir()))}"
    root.mkdir()
    body = _chunks(request.read(), chunk)
    asyncio.run(receive_form(request.headers["content-type"], body, root, 10**6, observer=digest))
    return digest.hexdigest()


def test_same_content_same_digest_whatever_the_boundary_and_chunks(tmp_path: Path) -> None:
    first = _digest(tmp_path)  # httpx makes a new random boundary for every request
    assert all(_digest(tmp_path, chunk=size) == first for size in (1, 7, 64, 100_000))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"name": "scan.nrrd"},
        {"content": b"z" * 2999 + b"y"},
        {"content": b"z" * 3001},
        {"path": "/dicomweb/m/studies"},
    ],
)
def test_any_change_gives_another_digest(tmp_path: Path, change: dict[str, object]) -> None:
    assert _digest(tmp_path, **change) != _digest(tmp_path)  # type: ignore[arg-type]
