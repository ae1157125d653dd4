"""Serving the viewer's page and scripts: gzip-compressed when the browser accepts it, with an ETag so that a
revalidation costs a 304. NiiVue's module is 3.1 MB as text and 0.9 MB gzipped."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from fastapi import Request, Response

from service.files import file_etag, not_modified


@lru_cache(maxsize=32)
def _compressed(path: Path, mtime_ns: int, size: int) -> bytes:
    """The gzipped file, made once per version of the file (the key holds its mtime and size)."""
    return gzip.compress(path.read_bytes(), compresslevel=6)


def static_response(request: Request, path: Path, media_type: str, headers: dict[str, str]) -> Response:
    """`path` with `headers` added, gzipped if accepted; 304 when the presented ETag matches. The two
    encodings have different ETags, as they are different bytes."""
    stat = path.stat()
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    etag = file_etag(stat, "-gz" if gzipped else "")
    common = {**headers, "ETag": etag, "Vary": "Accept-Encoding"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=common)
    if gzipped:
        body = _compressed(path, stat.st_mtime_ns, stat.st_size)
        return Response(body, media_type=media_type, headers={**common, "Content-Encoding": "gzip"})
    return Response(path.read_bytes(), media_type=media_type, headers=common)
