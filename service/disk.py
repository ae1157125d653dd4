"""Uploads against the data directory's free-space reserve (SEGSERVE_MIN_FREE_DISK_MB).

An upload is refused with 507 (`disk_full`) before its body is read when the declared length would cross
the reserve, and stopped while it streams as soon as the next chunk would; a full disk (ENOSPC) met while
writing gets the same answer. The caller removes the staging directory, so nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from segserve.config import Settings
from segserve.storage import DiskReserve, InsufficientSpace, is_disk_full
from service.metrics import UPLOAD_BYTES
from service.problems import Problem


def disk_full_problem(detail: str) -> Problem:
    return Problem(507, detail, code="disk_full")


def _full_disk_detail(exc: OSError) -> str:
    return (
        f"the upload could not be stored: the data directory's disk is full ({exc.strerror}); try again later"
    )


def upload_reserve(settings: Settings, staging: Path) -> DiskReserve:
    """The reserve that one upload into `staging` (under the data directory) is held to."""
    return DiskReserve(staging, settings.min_free_disk_bytes)


def check_declared_length(settings: Settings, declared: int) -> None:
    """Before reading a body of `declared` bytes (0 when unknown): 507 when it would cross the reserve."""
    try:
        DiskReserve(settings.staging_dir, settings.min_free_disk_bytes).require(declared)
    except InsufficientSpace as exc:
        raise disk_full_problem(str(exc)) from None


def write_chunk(file: IO[bytes], data: bytes, reserve: DiskReserve | None, route: str) -> None:
    """Write one chunk of an upload to `file`, counted in segserve_upload_bytes_total{route=...}.

    Raises Problem 507 when the chunk would cross the reserve (nothing of it is written) or the disk is full.
    """
    with _disk_problems():
        if reserve is not None:
            reserve.require(len(data))
        file.write(data)
    UPLOAD_BYTES.labels(route=route).inc(len(data))


def close_upload_file(file: IO[bytes]) -> None:
    """Close a part's file; the last buffered bytes are written here, so a full disk can show up now."""
    with _disk_problems():
        file.close()


@contextmanager
def reserved_writes(settings: Settings, staging: Path, n_bytes: int) -> Iterator[None]:
    """Around writes of about `n_bytes` into `staging` that are not an upload's bytes (the decoded copy of
    a validated scan): 507 before them when they would cross the reserve, and 507 for a full disk met
    while writing. The caller removes the staging directory."""
    with _disk_problems():
        upload_reserve(settings, staging).require(n_bytes)
        yield


@contextmanager
def _disk_problems() -> Iterator[None]:
    """The reserve's refusal (InsufficientSpace) and a full disk met inside, as 507 Problems; any other
    OSError as it is."""
    try:
        yield
    except InsufficientSpace as exc:
        raise disk_full_problem(str(exc)) from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_problem(_full_disk_detail(exc)) from None
        raise
