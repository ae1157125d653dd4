"""Streaming intake of a STOW-RS body (`multipart/related; type="application/dicom"`): each part goes
straight to its own file in a staging directory while bytes arrive, so memory stays flat whatever the body
size, and the size limit is enforced as the body streams (413 at once).

Media types (PS3.18 10.5): the request must be multipart/related; its `type` parameter, when given, must
be application/dicom (instances as PS3.10 files; the metadata + bulk data forms, application/dicom+json and
+xml, are not accepted). Anything else is answered 415 before the body is read. A part whose own
Content-Type names another media type is kept, and reported as failed by the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.multipart import parse_options_header

from segserve.storage import DiskReserve
from service.disk import close_upload_file, write_chunk
from service.multipart_feed import PartCollector, feed_multipart
from service.problems import Problem

DICOM = "application/dicom"
MAX_PARTS = 50_000


@dataclass
class StowPart:
    """One part of the body: its 1-based position, where it was written, and its declared media type
    ("" when the part has no Content-Type header)."""

    index: int
    path: Path
    media_type: str = ""
    size: int = 0


def check_media_type(content_type: str) -> bytes:
    """The boundary of a STOW-RS request's Content-Type; Problem 415 (or 400 without a boundary)."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/related":
        raise Problem(
            415,
            f'STOW-RS takes multipart/related; type="{DICOM}", not '
            f"{media_type.decode('latin-1') or 'a body without a content type'}",
            code="unsupported_media_type",
        )
    declared = options.get(b"type")
    if declared is not None and declared.decode("latin-1").strip().lower() != DICOM:
        raise Problem(
            415,
            f"only {DICOM} instances are accepted (multipart/related with type="
            f'"{declared.decode("latin-1")}" is not supported)',
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/related without a boundary", code="bad_multipart")
    return bytes(boundary)


class _Collector:
    def __init__(self, root: Path, max_bytes: int, reserve: DiskReserve | None) -> None:
        self.parts: list[StowPart] = []
        self.total = 0
        self._root = root
        self._max_bytes = max_bytes
        self._reserve = reserve
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._file: IO[bytes] | None = None

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise Problem(
                413, f"too many parts (more than {MAX_PARTS}) in one request", code="too_many_parts"
            )
        self._headers = {}
        part = StowPart(index=len(self.parts) + 1, path=self._root / f"{len(self.parts) + 1:05d}.part")
        self.parts.append(part)
        self._file = part.path.open("wb")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        media_type, _ = parse_options_header(self._headers.get(b"content-type", b""))
        self.parts[-1].media_type = media_type.decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.total += end - start
        if self.total > self._max_bytes:
            raise Problem(
                413, f"upload exceeds the limit of {self._max_bytes} bytes", code="upload_too_large"
            )
        assert self._file is not None
        write_chunk(self._file, data[start:end], self._reserve, "dicomweb")
        self.parts[-1].size += end - start

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            close_upload_file(file)


async def receive_related(
    boundary: bytes,
    body: AsyncIterator[bytes],
    root: Path,
    max_bytes: int,
    reserve: DiskReserve | None = None,
    observer: PartCollector | None = None,
) -> list[StowPart]:
    """Write each part of a multipart/related body into `root` (`00001.part`, ...) and list them in order
    (`observer` sees every part too, see feed_multipart). Raises Problem 413 past `max_bytes` or MAX_PARTS,
    400 for a malformed body, 507 past the disk `reserve` or on a full disk; the caller removes `root`."""
    collector = _Collector(root, max_bytes, reserve)
    await feed_multipart(collector, boundary, body, "multipart/related", observer)
    return collector.parts
