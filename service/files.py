"""Serving stored volumes: compressed as stored, cacheable by the browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import FileResponse

VOLUME_MAX_AGE_S = 3600


def volume_response(request: Request, path: Path, filename: str) -> Response:
    """`path` as application/gzip with an ETag (size + mtime) and private caching; 304 when it matches."""
    stat = path.stat()
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={VOLUME_MAX_AGE_S}"}
    presented = request.headers.get("if-none-match", "")
    if etag in [tag.strip() for tag in presented.split(",")] or presented.strip() == "*":
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/gzip", filename=filename, headers=headers)
