"""The interactive worker's session cache: prepared images (the classical engine's, on small real arrays)
kept between clicks, the least recently used dropped first beyond the byte budget, idle ones after the
TTL; and the mask summary (voxels, ml, box) the API answers with."""

from __future__ import annotations

import numpy as np

from models.interactive.classical import ClassicalEngine
from segserve.imaging.volume import Volume
from workers.interactive import Prepared, SessionCache, mask_summary


def _prepared(size: int) -> Prepared:
    rng = np.random.default_rng(size)
    image = rng.normal(100, 10, (size, size, size)).astype(np.float32)
    engine = ClassicalEngine()
    prepared = engine.prepare(image, (1.0, 1.0, 1.0))
    grid = Volume(
        array=np.broadcast_to(np.zeros(1, np.uint8), image.shape), affine=np.eye(4), source_format="nifti"
    )
    return Prepared(engine.name, prepared, grid, (1.0, 1.0, 1.0), int(prepared.nbytes))


def test_least_recently_used_goes_first_beyond_the_budget() -> None:
    a, b, c = _prepared(16), _prepared(16), _prepared(16)
    cache = SessionCache(budget_bytes=a.nbytes * 2, ttl_s=600)
    assert cache.put("a", a) == [] and cache.put("b", b) == []
    assert cache.get("a") is a  # a is now the most recently used
    assert cache.put("c", c) == ["b"]
    assert sorted(cache.ids()) == ["a", "c"] and cache.nbytes == a.nbytes + c.nbytes
    assert cache.get("b") is None


def test_an_entry_over_the_whole_budget_is_kept_alone() -> None:
    small, big = _prepared(8), _prepared(24)
    cache = SessionCache(budget_bytes=small.nbytes, ttl_s=600)
    cache.put("small", small)
    assert cache.put("big", big) == ["small"]
    assert cache.ids() == ["big"]


def test_idle_sessions_expire_and_free_their_bytes() -> None:
    a, b = _prepared(8), _prepared(8)
    cache = SessionCache(budget_bytes=10 * a.nbytes, ttl_s=30)
    cache.put("a", a)
    cache.put("b", b)
    b.last_used += 25  # b was used 25 s after a
    assert cache.drop_idle(now=a.last_used + 31) == ["a"]
    assert cache.ids() == ["b"] and cache.nbytes == b.nbytes
    assert cache.drop("b", "closed") == b.nbytes and cache.drop("b", "closed") == 0


def test_mask_summary() -> None:
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:5, 3:4, 7:11] = True
    summary = mask_summary(mask, (0.5, 1.0, 2.0))
    assert summary == {
        "voxels": 12,
        "volume_ml": 12 * 1.0 / 1000,
        "bbox": {"start": [2, 3, 7], "stop": [5, 4, 11]},
    }
    assert mask_summary(np.zeros((3, 3, 3), bool), (1, 1, 1)) == {"voxels": 0, "volume_ml": 0.0, "bbox": None}
