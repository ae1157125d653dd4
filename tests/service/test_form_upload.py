"""The form-data parser of POST /v1/jobs (service.uploads.receive_form) on damaged bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.problems import Problem
from service.uploads import ParsedUpload, receive_form


async def _chunks(body: bytes, size: int = 64) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _form() -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/v1/jobs", data={"model": "m"}, files={"image": ("scan.nii.gz", b"z" * 300)}
    )
    return request.read(), request.headers["content-type"]


def _parse(body: bytes, content_type: str, root: Path) -> ParsedUpload:
    return asyncio.run(receive_form(content_type, _chunks(body), root, 10**6))


def test_a_whole_form_is_parsed(tmp_path: Path) -> None:
    body, content_type = _form()
    form = _parse(body, content_type, tmp_path)
    assert form.text["model"] == "m" and len(form.files["image"]) == 1


@pytest.mark.parametrize("cut", [10, 60, 200])
def test_a_truncated_form_is_a_400_naming_it(tmp_path: Path, cut: int) -> None:
    """A body cut off before its closing boundary (a client or proxy that gave up) must not pass as a form
    with fewer or shorter parts."""
    body, content_type = _form()
    with pytest.raises(Problem) as info:
        _parse(body[:-cut], content_type, tmp_path / str(cut))
    assert info.value.status == 400 and info.value.code == "bad_multipart"
    assert "closing boundary" in info.value.detail or "malformed" in info.value.detail
