"""Every access to a job's results is in the audit log, with who, what, when and from where."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stack import Stack, run_job
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e


def test_result_access_is_audited_and_only_admins_read_the_log(stack: Stack, tmp_path: Path) -> None:
    image, reference = brain_crop(tmp_path, size=32)
    with stack.client() as admin:
        reviewer = admin.post("/v1/keys", json={"name": "rad", "role": "reviewer"}).json()
        job = run_job(admin, "brain-mri-structures", image, reference)
    with stack.client(reviewer["key"]) as c:
        assert c.get(f"/v1/jobs/{job['id']}/result").status_code == 200
        assert c.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"}).status_code == 200
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 200  # status polling: not an image access
        assert c.get("/v1/audit").status_code == 403
    with stack.client() as admin:
        events = admin.get("/v1/audit", params={"resource_id": job["id"]}).json()["items"]
    actions = [(e["action"], e["key_id"]) for e in events]
    assert ("GET /v1/jobs/{job_id}/result", reviewer["id"]) in actions
    assert ("GET /v1/jobs/{job_id}/metrics", reviewer["id"]) in actions
    admin_id = next(e["key_id"] for e in events if e["action"] == "POST /v1/jobs")
    assert admin_id and admin_id != reviewer["id"]  # the creation is filed under the new job's id
    assert not any(a == "GET /v1/jobs/{job_id}" for a, _ in actions)
    result_event = next(e for e in events if e["action"] == "GET /v1/jobs/{job_id}/result")
    assert result_event["client_address"] == "127.0.0.1" and result_event["status_code"] == 200
    assert result_event["at"] and result_event["resource_type"] == "job"
    metrics_event = next(e for e in events if e["action"] == "GET /v1/jobs/{job_id}/metrics")
    assert metrics_event["detail"] == {"format": "csv"}
