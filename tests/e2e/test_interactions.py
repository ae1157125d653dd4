"""Interaction sessions (#14) over HTTP on a real stack: uvicorn, a job worker, an interactive worker (its
own queue), Redis and SQLite, on brain-MRI jobs made from the shared scan. Clicks refine a mask served as
NIfTI on the result grid; undo gives the earlier mask exactly; a commit makes a label version equal to the
model's labels plus the mask; scanner coordinates equal voxel ones; bad prompts and sessions that are
closed, committed or expired get 4xx; a click is answered while the only job worker runs a long job.

Two more API processes on the same data and database: one with a 2 s idle TTL and a 1 ms wait for the
worker (sessions expire, clicks time out: 410, 503), one on a broker key prefix no interactive worker
serves (503)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Proc, Stack, free_port, segserve, wait_for, wait_job
from tests.support.viewer import create_key
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
SIDE_TTL_S = 2.0


@pytest.fixture(scope="module")
def istack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + one job worker + one interactive worker (Redis database 1, its own) on the shared weights."""
    require_shared()
    tmp: Path = tmp_path_factory.mktemp("interactions")
    env = {
        "SEGSERVE_REDIS_URL": redis_db(1),
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_WORKER_MEMORY_MB": "4864",
    }
    stack = Stack(tmp, env)
    try:
        stack.start()
        stack.start_interactive_worker()
        yield stack
    finally:
        stack.stop()


@contextmanager
def _other_api(istack: Stack, name: str, overrides: dict[str, str]) -> Iterator[str]:
    """Another API process on the same data, database and broker, with other settings; its base URL."""
    env = {**istack.env, "SEGSERVE_PORT": str(free_port()), **overrides}
    proc = Proc(name, segserve("api"), env, istack.tmp)
    base = f"http://127.0.0.1:{env['SEGSERVE_PORT']}"
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 60, name)
        yield base
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def short_api(istack: Stack) -> Iterator[str]:
    """Sessions made here expire after 2 s idle, and it waits 1 ms for an interactive worker's answer."""
    overrides = {"SEGSERVE_INTERACTIVE_TTL_S": str(SIDE_TTL_S), "SEGSERVE_INTERACTIVE_TIMEOUT_S": "0.001"}
    with _other_api(istack, "short-api", overrides) as base:
        yield base


@pytest.fixture(scope="module")
def unserved_api(istack: Stack) -> Iterator[str]:
    """An API on a broker key prefix that no interactive worker serves."""
    prefix = istack.env.get("SEGSERVE_BROKER_KEY_PREFIX", "") + "unserved:"
    with _other_api(istack, "unserved-api", {"SEGSERVE_BROKER_KEY_PREFIX": prefix}) as base:
        yield base


@pytest.fixture(scope="module")
def jobs(istack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two finished 48³ brain jobs (one to work on, one to be "another job")."""
    image, _ = brain_crop(tmp_path_factory.mktemp("interactions-input"), size=48)
    with istack.client() as c:
        posted = [
            c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")}) for _ in range(2)
        ]
        assert all(r.status_code == 202 for r in posted), [r.text for r in posted]
        finished = [wait_job(c, r.json()["id"]) for r in posted]
    assert all(j["status"] == "succeeded" for j in finished), finished
    return {"main": finished[0]["id"], "other": finished[1]["id"]}


@pytest.fixture(scope="module")
def reviewer(istack: Stack) -> str:
    return create_key(istack, "reviewer")


def _client(istack: Stack, key: str, base: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=base or istack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def _nifti(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return nib.Nifti1Image.from_bytes(gzip.decompress(resp.content))


def _result(c: httpx.Client, job: str, version: int = 0) -> Any:
    return _nifti(c.get(f"/v1/jobs/{job}/result", params={"version": version}))


def _mask(c: httpx.Client, job: str, sid: str) -> np.ndarray:
    image = _nifti(c.get(f"/v1/jobs/{job}/interactions/{sid}/mask"))
    assert image.get_data_dtype() == np.uint8
    data = np.asarray(image.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    return data.astype(bool)


def _structure_voxels(labels: np.ndarray) -> tuple[int, np.ndarray]:
    """The largest structure of the model's result and its voxels' indices (n, 3)."""
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    value = int(counts.argmax())
    return value, np.argwhere(labels == value)


def _click(c: httpx.Client, job: str, sid: str, point: list[Any], **extra: Any) -> httpx.Response:
    return c.post(
        f"/v1/jobs/{job}/interactions/{sid}/prompts", json={"type": "click", "point": point, **extra}
    )


def _session(c: httpx.Client, job: str, **body: Any) -> str:
    resp = c.post(f"/v1/jobs/{job}/interactions", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "open"
    return str(resp.json()["id"])


def test_clicks_undo_and_commit_as_a_new_label(istack: Stack, jobs: dict[str, str], reviewer: str) -> None:
    job = jobs["main"]
    with _client(istack, reviewer) as c:
        result = _result(c, job)
        labels = np.asarray(result.dataobj)
        _, voxels = _structure_voxels(labels)
        sid = _session(c, job)
        assert c.get(f"/v1/jobs/{job}/interactions/{sid}/mask").json()["code"] == "no_mask"

        first = voxels[len(voxels) // 2].tolist()
        one = _click(c, job, sid, first)
        assert one.status_code == 200, one.text
        assert one.json()["prompt_count"] == 1 and one.json()["voxels"] > 0 and one.json()["prepared"]
        mask_one = _mask(c, job, sid)
        assert int(mask_one.sum()) == one.json()["voxels"]

        outside_first = [v for v in voxels.tolist() if not mask_one[tuple(v)]]
        second = outside_first[len(outside_first) // 2] if outside_first else voxels[0].tolist()
        two = _click(c, job, sid, second)
        assert two.status_code == 200, two.text
        body = two.json()
        assert (
            body["prompt_count"] == 2 and body["voxels"] > 0 and not body["prepared"]
        )  # kept between clicks
        mask_two = _mask(c, job, sid)
        image = _nifti(c.get(body["mask_url"]))  # the URL in the answer serves the same mask
        assert image.shape == result.shape and np.allclose(image.affine, result.affine, atol=1e-4)
        assert int(mask_two.sum()) == body["voxels"]
        spacing = np.prod(result.header.get_zooms()[:3])
        assert body["volume_ml"] == pytest.approx(body["voxels"] * spacing / 1000, rel=1e-4)
        hit = np.argwhere(mask_two)
        assert body["bbox"] == {"start": hit.min(0).tolist(), "stop": (hit.max(0) + 1).tolist()}

        undone = c.post(f"/v1/jobs/{job}/interactions/{sid}/undo")
        assert undone.status_code == 200 and undone.json()["prompt_count"] == 1, undone.text
        assert np.array_equal(_mask(c, job, sid), mask_one)

        committed = c.post(
            f"/v1/jobs/{job}/interactions/{sid}/commit",
            json={"target": {"name": "Region of interest"}, "comment": "one click"},
        )
        assert committed.status_code == 201, committed.text
        version = committed.json()
        value = max(int(v) for v in c.get(f"/v1/models/{MODEL}").json()["labels"]) + 1
        assert version["label_names"] == {str(value): "Region of interest"}

        saved = np.asarray(_result(c, job, version["version"]).dataobj)
        expected = labels.copy()
        expected[mask_one] = value
        assert np.array_equal(saved, expected)  # the model's labels plus the mask, voxel by voxel
        assert np.array_equal(np.asarray(_result(c, job, 0).dataobj), labels)  # the original is untouched

        listed = c.get(f"/v1/jobs/{job}/labels/versions").json()["items"][-1]
        key_id = c.get(f"/v1/jobs/{job}/interactions/{sid}").json()["key_id"]
        assert listed["version"] == version["version"] and listed["key_id"] == key_id
        assert listed["created_at"] and listed["comment"] == "one click"
        assert listed["provenance"]["prompts"] == [{"type": "click", "point": first, "foreground": True}]
        assert listed["provenance"]["engine"] == "classical" and listed["provenance"]["session_id"] == sid
        assert value in listed["label_values"] and listed["label_names"] == {str(value): "Region of interest"}

        state = c.get(f"/v1/jobs/{job}/interactions/{sid}").json()
        assert state["status"] == "committed" and state["committed_version"] == version["version"]
        again = _click(c, job, sid, first)
        assert again.status_code == 409 and again.json()["code"] == "session_committed"

        # The named label is now a label of the job: a new session can add to it by value.
        later = _session(c, job, target={"label": value})
        assert c.get(f"/v1/jobs/{job}/interactions/{later}").json()["target"]["label"] == value
        assert c.delete(f"/v1/jobs/{job}/interactions/{later}").status_code == 200


def test_scanner_click_equals_voxel_click(istack: Stack, jobs: dict[str, str], reviewer: str) -> None:
    job = jobs["main"]
    with _client(istack, reviewer) as c:
        result = _result(c, job)
        _, voxels = _structure_voxels(np.asarray(result.dataobj))
        point = voxels[len(voxels) // 3].tolist()
        ras = result.affine @ np.array([*point, 1.0])
        lps = [float(-ras[0]), float(-ras[1]), float(ras[2])]  # DICOM patient coordinates
        by_voxel, by_scanner = _session(c, job), _session(c, job)
        assert _click(c, job, by_voxel, point).status_code == 200
        resp = _click(c, job, by_scanner, lps, coordinates="scanner")
        assert resp.status_code == 200, resp.text
        prompts = c.get(f"/v1/jobs/{job}/interactions/{by_scanner}").json()["prompts"]
        assert prompts == [{"type": "click", "point": point, "foreground": True}]
        assert np.array_equal(_mask(c, job, by_voxel), _mask(c, job, by_scanner))
        for sid in (by_voxel, by_scanner):
            c.delete(f"/v1/jobs/{job}/interactions/{sid}")


def test_box_and_painted_slice(istack: Stack, jobs: dict[str, str], reviewer: str) -> None:
    job = jobs["main"]
    with _client(istack, reviewer) as c:
        _, voxels = _structure_voxels(np.asarray(_result(c, job).dataobj))
        # the structure's voxel nearest the middle of the 48³ image, so the box fits around it
        i, j, k = voxels[np.argmin(((voxels - 24) ** 2).sum(axis=1))].tolist()
        sid = _session(c, job)
        # a box drawn on slice k: the structure stays inside it in the two in-plane axes
        lo, hi = [i - 4, j - 4, k], [i + 4, j + 4, k]
        box = c.post(f"/v1/jobs/{job}/interactions/{sid}/prompts", json={"type": "box", "lo": lo, "hi": hi})
        assert box.status_code == 200 and box.json()["voxels"] > 0, box.text
        bbox = box.json()["bbox"]
        assert all(bbox["start"][a] >= lo[a] and bbox["stop"][a] <= hi[a] + 1 for a in (0, 1)), bbox
        assert c.post(f"/v1/jobs/{job}/interactions/{sid}/undo").json()["voxels"] == 0
        # one painted slice is taken as painted
        pixels = [[u, v] for u in range(i - 1, i + 2) for v in range(j - 1, j + 2)]
        painted = c.post(
            f"/v1/jobs/{job}/interactions/{sid}/prompts",
            json={"type": "slice", "axis": 2, "index": k, "pixels": pixels},
        )
        assert painted.status_code == 200 and painted.json()["voxels"] == 9, painted.text
        expected = np.zeros((48, 48, 48), dtype=bool)
        expected[i - 1 : i + 2, j - 1 : j + 2, k] = True
        assert np.array_equal(_mask(c, job, sid), expected)
        outside = c.post(
            f"/v1/jobs/{job}/interactions/{sid}/prompts",
            json={"type": "slice", "axis": 2, "index": 48, "pixels": pixels},
        )
        assert outside.status_code == 422 and outside.json()["code"] == "prompt_outside_volume"

        # committed into an existing structure of the latest version: those voxels take its value
        versions = c.get(f"/v1/jobs/{job}/labels/versions").json()
        base = np.asarray(_result(c, job, versions["latest"]).dataobj)
        committed = c.post(f"/v1/jobs/{job}/interactions/{sid}/commit", json={"target": {"label": 2}})
        assert committed.status_code == 201, committed.text
        assert committed.json()["provenance"]["base_version"] == versions["latest"]
        expected_labels = base.copy()
        expected_labels[expected] = 2
        saved = np.asarray(_result(c, job, committed.json()["version"]).dataobj)
        assert np.array_equal(saved, expected_labels)
        # labels named in the base version stay named while they are present
        base_names = versions["items"][-1]["label_names"]
        present = {str(v) for v in np.unique(saved)}
        assert committed.json()["label_names"] == {v: n for v, n in base_names.items() if v in present}


def test_a_restarted_worker_prepares_again(istack: Stack, jobs: dict[str, str], reviewer: str) -> None:
    """The prepared image lives in the worker: after a restart the next click prepares it again from the
    job's stored input (and says so in the answer and the log); the mask is the same."""
    job = jobs["main"]
    with _client(istack, reviewer) as c:
        _, voxels = _structure_voxels(np.asarray(_result(c, job).dataobj))
        point = voxels[len(voxels) // 4].tolist()
        sid = _session(c, job)
        first = _click(c, job, sid, point).json()
        assert first["prepared"] and not c.post(f"/v1/jobs/{job}/interactions/{sid}/undo").json()["prepared"]
        before = _mask(c, job, sid)
        old = istack.workers.pop()
        old.stop()
        new = Proc(
            "interactive-restarted", segserve("worker", "--queue", "interactive"), istack.env, istack.tmp
        )
        istack.workers.append(new)
        wait_for(lambda: "ready." in new.log_path.read_text(), 90, "the restarted interactive worker")
        again = _click(c, job, sid, point)
        assert again.status_code == 200 and again.json()["prepared"], again.text
        assert again.json()["voxels"] == first["voxels"] and not before.any()
        assert f"session {sid}: prepared image not in this worker's cache" in new.log_path.read_text()
        c.delete(f"/v1/jobs/{job}/interactions/{sid}")


def test_bad_prompts_and_sessions_get_4xx(istack: Stack, jobs: dict[str, str], reviewer: str) -> None:
    job, other = jobs["main"], jobs["other"]
    with _client(istack, reviewer) as c:
        sid = _session(c, job)
        outside = _click(c, job, sid, [48, 0, 0])
        assert outside.status_code == 422 and outside.json()["code"] == "prompt_outside_volume"
        assert "(48, 0, 0)" in outside.json()["detail"] and "48, 48, 48" in outside.json()["detail"]
        far = _click(c, job, sid, [5000.0, 0.0, 0.0], coordinates="scanner")
        assert far.status_code == 422 and far.json()["code"] == "prompt_outside_volume"
        assert "scanner" in far.json()["detail"]
        half = _click(c, job, sid, [1.5, 2, 3])
        assert half.status_code == 422 and half.json()["code"] == "invalid_prompt"
        box = c.post(
            f"/v1/jobs/{job}/interactions/{sid}/prompts",
            json={"type": "box", "lo": [0, 0, 0], "hi": [5, 5, 99]},
        )
        assert box.status_code == 422 and box.json()["code"] == "prompt_outside_volume"
        unknown = c.post(f"/v1/jobs/{job}/interactions/{sid}/prompts", json={"type": "lasso"})
        assert unknown.status_code == 422 and unknown.headers["content-type"].startswith(
            "application/problem+json"
        )
        assert c.get(f"/v1/jobs/{job}/interactions/{sid}").json()["prompt_count"] == 0  # none was kept

        assert c.post(f"/v1/jobs/{job}/interactions/{sid}/undo").json()["code"] == "nothing_to_undo"
        empty = c.post(f"/v1/jobs/{job}/interactions/{sid}/commit", json={"target": {"label": 2}})
        assert empty.status_code == 422 and empty.json()["code"] == "empty_mask"
        no_target = c.post(f"/v1/jobs/{job}/interactions/{sid}/commit", json={})
        assert no_target.status_code == 422 and no_target.json()["code"] == "missing_target"
        for target, code in (
            ({"label": 200}, "unknown_label"),
            ({"name": "nonsense", "value": 1}, "label_value_taken"),
        ):
            resp = c.post(f"/v1/jobs/{job}/interactions", json={"target": target})
            assert resp.status_code == 422 and resp.json()["code"] == code, resp.text
        engine = c.post(f"/v1/jobs/{job}/interactions", json={"engine": "magic"})
        assert engine.status_code == 422 and engine.json()["code"] == "unknown_engine"

        for path in (
            f"/v1/jobs/{other}/interactions/{sid}/prompts",
            f"/v1/jobs/{job}/interactions/nope/prompts",
        ):
            resp = c.post(path, json={"type": "click", "point": [1, 1, 1]})
            assert resp.status_code == 404 and resp.json()["code"] == "session_not_found", resp.text
        assert c.post("/v1/jobs/nope/interactions", json={}).status_code == 404

        # a background click alone seeds no structure: an empty mask, which cannot be committed
        background = _click(c, job, sid, [0, 0, 0], foreground=False)
        assert background.status_code == 200 and background.json()["voxels"] == 0, background.text
        assert background.json()["bbox"] is None and not _mask(c, job, sid).any()
        resp = c.post(f"/v1/jobs/{job}/interactions/{sid}/commit", json={"target": {"label": 2}})
        assert resp.status_code == 422 and resp.json()["code"] == "empty_mask", resp.text

        closed = c.delete(f"/v1/jobs/{job}/interactions/{sid}")
        assert closed.status_code == 200 and closed.json()["status"] == "closed"
        for resp in (
            _click(c, job, sid, [1, 1, 1]),
            c.get(f"/v1/jobs/{job}/interactions/{sid}/mask"),
            c.post(f"/v1/jobs/{job}/interactions/{sid}/undo"),
            c.delete(f"/v1/jobs/{job}/interactions/{sid}"),
        ):
            assert resp.status_code == 409 and resp.json()["code"] == "session_closed", resp.text
            assert resp.headers["content-type"].startswith("application/problem+json")
    # the interactive worker dropped the closed session's prepared image (its sweep reads the status)
    worker = istack.workers[-1]
    wait_for(lambda: f"session {sid}: session closed; freed" in worker.log_path.read_text(), 30, "the sweep")


def test_a_session_belongs_to_the_key_that_opened_it(
    istack: Stack, jobs: dict[str, str], reviewer: str
) -> None:
    """Another reviewer's key may read the session's state but not prompt, read its mask, undo, commit or
    close it (403 session_not_yours); an admin's key may."""
    job = jobs["main"]
    other_key = create_key(istack, "reviewer")
    with _client(istack, reviewer) as mine, _client(istack, other_key) as theirs, istack.client() as admin:
        sid = _session(mine, job)
        centre = [24, 24, 24]
        assert _click(mine, job, sid, centre).status_code == 200
        base = f"/v1/jobs/{job}/interactions/{sid}"
        for resp in (
            _click(theirs, job, sid, centre, foreground=False),
            theirs.get(f"{base}/mask"),
            theirs.post(f"{base}/undo"),
            theirs.post(f"{base}/commit", json={"target": {"name": "not mine"}}),
            theirs.delete(base),
        ):
            assert resp.status_code == 403 and resp.json()["code"] == "session_not_yours", resp.text
            assert resp.headers["content-type"].startswith("application/problem+json")
        state = theirs.get(base)
        assert state.status_code == 200 and state.json()["prompt_count"] == 1  # nothing they sent was kept
        assert _click(admin, job, sid, [2, 2, 2], foreground=False).status_code == 200
        assert admin.delete(base).json()["status"] == "closed"


def test_expired_session_is_gone(istack: Stack, short_api: str, jobs: dict[str, str], reviewer: str) -> None:
    job = jobs["main"]
    with _client(istack, reviewer, base=short_api) as c:
        sid = _session(c, job)
        wait_for(
            lambda: c.get(f"/v1/jobs/{job}/interactions/{sid}").json()["status"] == "expired",
            10 * SIDE_TTL_S,
            "expiry",
        )
        resp = _click(c, job, sid, [10, 10, 10])
        assert resp.status_code == 410 and resp.json()["code"] == "session_expired", resp.text
        assert "create a new session" in resp.json()["detail"].lower()
        assert c.get(f"/v1/jobs/{job}/interactions/{sid}/mask").status_code == 410


def test_no_answer_in_time_is_503(istack: Stack, short_api: str, jobs: dict[str, str], reviewer: str) -> None:
    job = jobs["main"]
    with _client(istack, reviewer, base=short_api) as c:
        sid = _session(c, job)
        resp = _click(c, job, sid, [10, 10, 10])
        assert resp.status_code == 503 and resp.json()["code"] == "interactive_timeout", resp.text
        assert int(resp.headers["retry-after"]) > 0
        assert c.get(f"/v1/jobs/{job}/interactions/{sid}").json()["prompt_count"] == 0  # not applied


def test_no_interactive_worker_is_503(
    istack: Stack, unserved_api: str, jobs: dict[str, str], reviewer: str
) -> None:
    job = jobs["main"]
    with _client(istack, reviewer, base=unserved_api) as c:
        sid = _session(c, job)
        resp = _click(c, job, sid, [10, 10, 10])
        assert resp.status_code == 503 and resp.json()["code"] == "no_interactive_worker", resp.text
        assert int(resp.headers["retry-after"]) > 0
        assert c.get(f"/v1/jobs/{job}/interactions/{sid}").json()["prompt_count"] == 0  # not applied


def test_click_answered_while_the_job_worker_is_busy(
    istack: Stack, jobs: dict[str, str], reviewer: str
) -> None:
    job = jobs["main"]
    with istack.client() as admin, _client(istack, reviewer) as c:
        long = admin.post(
            "/v1/jobs", data={"model": MODEL}, files={"image": (SUBJECT_A / "norm.mgz").open("rb")}
        )
        assert long.status_code == 202, long.text
        long_id = long.json()["id"]
        try:
            wait_for(
                lambda: admin.get(f"/v1/jobs/{long_id}").json()["status"] == "running", 120, "the long job"
            )
            busy = c.post(f"/v1/jobs/{long_id}/interactions", json={})
            assert busy.status_code == 409 and busy.json()["code"] == "job_not_finished"
            _, voxels = _structure_voxels(np.asarray(_result(c, job).dataobj))
            sid = _session(c, job)
            resp = _click(c, job, sid, voxels[len(voxels) // 2].tolist())
            assert resp.status_code == 200 and resp.json()["voxels"] > 0, resp.text
            # answered while the only job worker was still on the long job
            assert admin.get(f"/v1/jobs/{long_id}").json()["status"] == "running"
            c.delete(f"/v1/jobs/{job}/interactions/{sid}")
        finally:
            admin.delete(f"/v1/jobs/{long_id}")


def test_openapi_documents_the_session_calls(istack: Stack) -> None:
    paths = httpx.get(f"{istack.base_url}/openapi.json", timeout=30).json()["paths"]
    base = "/v1/jobs/{job_id}/interactions"
    for path, method in (
        (base, "post"),
        (base + "/{session_id}", "get"),
        (base + "/{session_id}", "delete"),
        (base + "/{session_id}/prompts", "post"),
        (base + "/{session_id}/undo", "post"),
        (base + "/{session_id}/mask", "get"),
        (base + "/{session_id}/commit", "post"),
    ):
        operation = paths[path][method]
        assert operation["summary"]
        errors = [s for s in operation["responses"] if int(s) >= 400]
        assert errors and all(
            list(operation["responses"][s].get("content", {})) in ([], ["application/problem+json"])
            for s in errors
        )
    assert "503" in paths[base + "/{session_id}/prompts"]["post"]["responses"]
