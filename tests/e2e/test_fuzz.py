"""Schemathesis against the running service's own OpenAPI (`/openapi.json`), over real HTTP to a real
uvicorn with a real Celery worker: whatever a client sends, the answer is never a 5xx, and every error
(status >= 400) is an `application/problem+json` document whose `status` is the response's status.

The case budget is bounded and the generation derandomised (a fixed seed, no example database), so a CI run
sends the same requests every time: `MAX_EXAMPLES` generated cases per operation as admin, after
schemathesis's examples and coverage cases (boundary values, wrong types, missing parts), and
`OTHER_ROLES_EXAMPLES` per operation with a key of each other role, no key and a wrong key.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from tests.conftest import redis_db
from tests.support.paths import WEIGHTS, require_shared
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

SEED = 15_08
MAX_EXAMPLES = 25
OTHER_ROLES_EXAMPLES = 6
OTHER_ROLES = ("submitter", "reviewer", "researcher", "no key", "wrong key")
# Uploads are fuzzed with small bodies: a 1 MiB limit makes every generated file either fit or be
# refused with 413, and keeps the run short.
MAX_UPLOAD_BYTES = 1024 * 1024
# STOW-RS bodies (multipart/related; type="application/dicom") have no serializer in schemathesis: the
# generated body goes in as the one part of a multipart/related envelope with this boundary.
STOW_BOUNDARY = "fuzz-stow-boundary"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


@schemathesis.serializer("multipart/related")
def _stow_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    part = value if isinstance(value, bytes) else json.dumps(value, default=str).encode()
    head = f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + part + f"\r\n--{STOW_BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (API, one worker, SQLite, the shared weights as models), so that the keys, jobs
    and audit rows the fuzzer makes are seen by no other test."""
    require_shared()
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "SEGSERVE_REDIS_URL": redis_db(6),
        "SEGSERVE_MODELS_DIR": str(WEIGHTS),
        "SEGSERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SEGSERVE_MIN_FREE_DISK_MB": "0",
    }
    with running_stack(tmp, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def role_headers(fuzz_stack: Stack) -> dict[str, dict[str, str]]:
    """Authorization headers per role, each a key made for the fuzzer (never the stack's own admin key,
    so that a fuzzed DELETE /v1/keys cannot lock the test out)."""
    headers: dict[str, dict[str, str]] = {"no key": {}, "wrong key": {"Authorization": "Bearer ssk_wrong"}}
    with fuzz_stack.client() as client:
        for role in ("admin", "submitter", "reviewer", "researcher"):
            made = client.post("/v1/keys", json={"name": f"fuzz {role}", "role": role})
            assert made.status_code == 201, made.text
            headers[role] = {"Authorization": f"Bearer {made.json()['key']}"}
    return headers


@pytest.fixture(scope="module")
def api_schema(fuzz_stack: Stack) -> BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.base_url}/openapi.json", config=config, timeout=30)
    schema.config.update(base_url=fuzz_stack.base_url, request_timeout=60)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read `request.node._nodeid`, which pytest 9.2 no longer has (it
    keeps the id elsewhere); give it the node's id so that it can name each operation's subtest."""
    request.node._nodeid = request.node.nodeid


def _is_store_response(path: str, status: int, content_type: str) -> bool:
    """STOW-RS answers 409 when no instance was stored with PS3.18's store response (application/dicom+json,
    each failed instance with its reason), as DICOMweb clients expect: the one error that is not a
    problem document."""
    return (
        path.startswith("/dicomweb/") and status == 409 and content_type.startswith("application/dicom+json")
    )


def _check(case: Case, response: Any) -> None:
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where} answered {response.status_code}: {response.text[:2000]}"
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code >= 400 and not _is_store_response(case.path, response.status_code, content_type):
        assert content_type.startswith("application/problem+json"), (
            f"{where} answered {response.status_code} as {content_type!r}: {response.text[:500]}"
        )
        body = json.loads(response.text)
        assert body["status"] == response.status_code and body["detail"] and body["code"], body


@pytest.fixture(scope="module")
def model_ids(fuzz_stack: Stack) -> list[str]:
    with fuzz_stack.client() as client:
        return [m["id"] for m in client.get("/v1/models").json()["items"] if m["available"]]


def _headers(case: Case, auth: dict[str, str]) -> dict[str, str]:
    if (case.media_type or "").startswith("multipart/related"):
        return {**auth, "Content-Type": STOW_CONTENT_TYPE}
    return auth


def _installed(generated: str, model_ids: list[str]) -> str:
    """An installed model id in most cases, else the generated one; which follows from the generated id,
    so the run stays reproducible."""
    index = zlib.crc32(generated.encode("utf-8", "surrogatepass")) % (len(model_ids) + 1)
    return model_ids[index] if index < len(model_ids) else generated


def _prepare(case: Case, model_ids: list[str]) -> None:
    """A generated model id is always unknown, so the upload behind it would never be read: the form of
    POST /v1/jobs and the `{model}` of the STOW-RS routes name an installed model in most cases."""
    body = case.body
    if (
        case.operation.label == "POST /v1/jobs"
        and isinstance(body, dict)
        and isinstance(body.get("model"), str)
    ):
        case.body = {**body, "model": _installed(body["model"], model_ids)}
    model = (case.path_parameters or {}).get("model")
    if case.operation.path.startswith("/dicomweb/") and isinstance(model, str):
        case.path_parameters = {**(case.path_parameters or {}), "model": _installed(model, model_ids)}


@settings(deadline=None, suppress_health_check=list(HealthCheck))
@schema.parametrize()
def test_fuzz_as_admin(case: Case, role_headers: dict[str, dict[str, str]], model_ids: list[str]) -> None:
    _prepare(case, model_ids)
    _check(case, case.call(headers=_headers(case, role_headers["admin"])))


@settings(max_examples=OTHER_ROLES_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@schema.parametrize()
@schema.given(role=st.sampled_from(OTHER_ROLES))
def test_fuzz_other_roles(
    case: Case, role: str, role_headers: dict[str, dict[str, str]], model_ids: list[str]
) -> None:
    _prepare(case, model_ids)
    _check(case, case.call(headers=_headers(case, role_headers[role])))


def test_openapi_documents_errors_as_problems(fuzz_stack: Stack) -> None:
    """The live document says what the fuzzer checks: every error response with a body is documented as a
    problem document (not as FastAPI's `application/json` validation error; STOW-RS's 409 store response
    aside), and the job form names real fields (the channel parts as a
    pattern, not a literal 'image.<channel>' field)."""
    document = httpx.get(f"{fuzz_stack.base_url}/openapi.json", timeout=30).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                documented = list(response.get("content", {}))
                if (
                    int(status) >= 400
                    and documented
                    and not _is_store_response(path, int(status), documented[0])
                ):
                    assert documented == ["application/problem+json"], (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    form = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert all("<" not in name for name in form["properties"])
    assert any(re.fullmatch(pattern, "image.flair") for pattern in form["patternProperties"])


def test_fuzz_left_the_service_healthy(fuzz_stack: Stack, role_headers: dict[str, dict[str, str]]) -> None:
    """After the fuzzing the stack still answers, the fuzzer's admin key still works (a fuzzed DELETE
    /v1/keys did not revoke it halfway, which would have left the rest of the run at 401), and nothing is
    left half-written in staging."""
    assert httpx.get(f"{fuzz_stack.base_url}/readyz", timeout=30).status_code == 200
    keys = httpx.get(f"{fuzz_stack.base_url}/v1/keys", headers=role_headers["admin"], timeout=30)
    assert keys.status_code == 200, keys.text
    staging = fuzz_stack.tmp / "data" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
