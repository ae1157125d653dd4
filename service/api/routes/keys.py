"""/v1/keys: API key administration (admin role)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from segserve.db import ApiKey, Role
from segserve.security import create_key, revoke_key
from service.api.deps import CanAdminKeys, SessionDep
from service.problems import Problem
from service.schemas import KeyCreate, KeyCreated, KeyPublic

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key (shown once)")
def create(body: KeyCreate, session: SessionDep, _key: CanAdminKeys) -> KeyCreated:
    new = create_key(session, body.name, Role(body.role))
    session.commit()
    row = session.get(ApiKey, new.id)
    assert row is not None
    return KeyCreated(**KeyPublic.from_row(row).model_dump(), key=new.secret)


@router.get("", response_model=list[KeyPublic], summary="List API keys (never their secrets)")
def list_keys(session: SessionDep, _key: CanAdminKeys) -> list[KeyPublic]:
    return [KeyPublic.from_row(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]


@router.delete("/{key_id}", status_code=204, summary="Revoke an API key")
def revoke(key_id: str, session: SessionDep, _key: CanAdminKeys) -> None:
    if not revoke_key(session, key_id):
        raise Problem(404, f"no active key with id '{key_id}'", code="key_not_found")
    session.commit()
