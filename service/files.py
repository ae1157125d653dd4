"""Serving stored volumes (compressed as stored, cacheable by the browser) and tables as CSV downloads."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import FileResponse

VOLUME_MAX_AGE_S = 3600


def file_etag(stat: os.stat_result, variant: str = "") -> str:
    """A strong ETag from a file's size and modification time; `variant` tells encodings apart."""
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}{variant}"'


def not_modified(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names `etag` (or is `*`): answer 304."""
    presented = request.headers.get("if-none-match", "")
    return etag in [tag.strip() for tag in presented.split(",")] or presented.strip() == "*"


def volume_response(request: Request, path: Path, filename: str) -> Response:
    """`path` as application/gzip with an ETag (size + mtime) and private caching; 304 when it matches."""
    etag = file_etag(path.stat())
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={VOLUME_MAX_AGE_S}"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/gzip", filename=filename, headers=headers)


def csv_attachment(text: str, filename: str) -> Response:
    """A CSV table as a download named `filename` (text/csv, Content-Disposition: attachment)."""
    return Response(
        text, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
