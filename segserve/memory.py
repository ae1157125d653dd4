"""A worker's memory budget: ``SEGSERVE_WORKER_MEMORY_MB``, else the cgroup's limit, and the refusal.

A job whose estimated peak (``models.memory.estimate_job_bytes``) is over the budget fails at once with
:class:`InsufficientMemory`, naming both sizes, rather than being killed by the kernel halfway through.
"""

from __future__ import annotations

from pathlib import Path

from segserve.config import Settings

GIB = 1 << 30
# cgroup v2 first, then v1; "max" (v2) or a v1 value near 2^63 means no limit
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_NO_LIMIT = 1 << 60


class InsufficientMemory(ValueError):
    """The input is too large for the memory a worker has: the message names the estimate and the budget.

    The API answers it as 422 problem+json with ``code``; a worker fails the job with that code.
    """

    code = "insufficient_worker_memory"
    status = 422


def cgroup_memory_limit(paths: tuple[Path, ...] = _CGROUP_LIMITS) -> int | None:
    """This process's cgroup memory limit in bytes, or None when there is none (or none can be read)."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return None
        limit = int(text)
        return limit if limit < _NO_LIMIT else None
    return None


def worker_budget(settings: Settings, *, use_cgroup: bool = True) -> tuple[int, str] | None:
    """(bytes, where the number comes from) of a worker's memory budget, or None when there is none.

    ``SEGSERVE_WORKER_MEMORY_MB`` wins; else, with ``use_cgroup`` (in a worker, not in the API, whose own
    cgroup says nothing about the workers'), the cgroup's limit.
    """
    if settings.worker_memory_mb is not None:
        return settings.worker_memory_mb * (1 << 20), "SEGSERVE_WORKER_MEMORY_MB"
    if use_cgroup:
        limit = cgroup_memory_limit()
        if limit is not None:
            return limit, "the worker's cgroup memory limit"
    return None


def check_fits(needed_bytes: int, what: str, budget: tuple[int, str] | None) -> None:
    """Raise InsufficientMemory when ``needed_bytes`` is over ``budget`` (from :func:`worker_budget`).

    ``what`` says what needs it, e.g. "model brain-mri-structures on a 512x512x1500 int16 scan (750 MiB):
    about 5.2 GiB (input 0.73 GiB, model 4.0 GiB)".
    """
    if budget is None:
        return
    limit, source = budget
    if needed_bytes > limit:
        raise InsufficientMemory(
            f"{what}; a worker has {limit / GIB:.1f} GiB ({source}), so the job would not fit in its memory. "
            "Send a smaller or coarser scan (fewer slices, a crop), or run it on workers with more memory."
        )
