"""Each upload is decoded once, by the API that validates it: the worker maps what the API kept
(input/decoded/, segserve.scans.decoded). Proved over HTTP by damaging the stored upload between the 202
and the worker's start: the job still succeeds, and the worker's log says where it read the input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, wait_job
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def test_worker_does_not_decode_the_upload_again(tmp_path: Path) -> None:
    require_shared()
    # db 13 is test_recovery's too: tests of one file run one after another, other files' processes use
    # other key prefixes (tests/conftest.py).
    stack = Stack(tmp_path, {"SEGSERVE_REDIS_URL": redis_db(13), "SEGSERVE_MODELS_DIR": str(WEIGHTS)})
    try:
        stack.start()
        stack.workers[0].stop()  # the job waits in the queue while its upload is damaged
        image, reference = brain_crop(tmp_path, size=40)
        with stack.client() as c:
            resp = c.post(
                "/v1/jobs",
                data={"model": MODEL},
                files={"image": image.open("rb"), "reference": reference.open("rb")},
            )
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            input_dir = tmp_path / "data" / "jobs" / job_id / "input"
            record = json.loads((input_dir / "decoded" / "image.json").read_text())
            assert record["shape"] == [40, 40, 40] and record["file"] == "decoded/image.npy"
            assert (input_dir / "decoded" / "reference.json").is_file()
            uploads = [input_dir / "image" / "0000.nii.gz", input_dir / "reference" / "0000.nii.gz"]
            originals = [p.read_bytes() for p in uploads]
            for path, data in zip(uploads, originals, strict=True):
                path.write_bytes(data[:100])  # decoding this now fails: corrupt_image

            worker = stack.start_worker()
            done = wait_job(c, job_id)
            assert done["status"] == "succeeded", (done, stack.diagnostics())
            assert c.get(f"/v1/jobs/{job_id}/result").status_code == 200
            assert len(c.get(f"/v1/jobs/{job_id}/metrics").json()["structures"]) == 17
        log = worker.log_path.read_text(errors="replace")
        assert f"job {job_id}: input mapped from its decoded copy" in log, log[-3000:]
    finally:
        stack.stop()
