"""SEGSERVE_DICOMWEB_MODEL_RULES over the real API (uvicorn, SQLite; no worker: the routing is decided when
instances are stored): POST /dicomweb/studies with no model in the path sends each series to the model its
modality names, and refuses, per instance and with the reason, what no rule or default covers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.dicomweb import api_only_stack, ct_series, related_body, to_bytes
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
CT_MODEL = "ct_rules_test"
FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # CT to the bundle; PT to a model that does not exist; no default model.
        "SEGSERVE_DICOMWEB_MODEL_RULES": json.dumps({"CT": CT_MODEL, "pt": "no-such-model"}),
        "SEGSERVE_DICOMWEB_QUIET_S": "3600",  # stays open: only the routing is checked
    }
    with api_only_stack(tmp_path_factory.mktemp("rules"), env, CT_MODEL) as stack:
        yield stack


def _as(modality: str, series: list[Dataset]) -> list[Dataset]:
    uid = generate_uid()
    for ds in series:
        ds.Modality, ds.SeriesInstanceUID = modality, uid
    return series


def _stow(api: Stack, series: list[Dataset]) -> tuple[int, dict[str, object], list[str]]:
    body, content_type = related_body([to_bytes(ds) for ds in series])
    with api.client() as c:
        resp = c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    return resp.status_code, resp.json(), resp.headers.get_list("warning")


def _intake(api: Stack, series_uid: str) -> list[dict[str, object]]:
    with api.client() as c:
        items = c.get("/v1/intake").json()["items"]
    return [i for i in items if i["series_instance_uid"] == series_uid]


def test_each_modality_goes_to_its_model_and_the_rest_is_refused_per_instance(api: Stack) -> None:
    ct = ct_series(compress=False)
    status, _, _ = _stow(api, ct)
    assert status == 200
    (row,) = _intake(api, ct[0].SeriesInstanceUID)
    assert row["model"] == CT_MODEL and row["instance_count"] == 3, row

    mr = _as("MR", ct_series(compress=False))
    status, body, warnings = _stow(api, mr)
    assert status == 409, body
    failed = body[FAILED_SOP_SEQUENCE]["Value"]  # type: ignore[index]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [0x0122] * 3
    assert any("no model for modality 'MR'" in w for w in warnings), warnings
    assert _intake(api, mr[0].SeriesInstanceUID) == []

    pet = _as("PT", ct_series(compress=False))[:1]
    status, body, warnings = _stow(api, [*pet, *_as("CT", ct_series(compress=False))])
    assert status == 202, body  # the CT instances stored, the PT one refused naming the bad rule
    assert any("unknown model 'no-such-model'" in w for w in warnings), warnings
