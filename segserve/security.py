"""API keys: generation, hashing and role permissions.

A key looks like `ssk_<id>_<secret>`; the id is public (it appears in logs and the audit trail), the secret
is 32 random bytes. Only sha256(key) is stored: keys are high-entropy, so a slow hash adds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from segserve.db import ApiKey, Role, utcnow

PREFIX = "ssk"

# What each role may do. Admin may do everything.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "jobs:create": frozenset({Role.submitter, Role.researcher, Role.admin}),
    "jobs:read": frozenset({Role.submitter, Role.reviewer, Role.researcher, Role.admin}),
    "jobs:delete": frozenset({Role.submitter, Role.admin}),
    "models:read": frozenset({Role.submitter, Role.reviewer, Role.researcher, Role.admin}),
    "system:read": frozenset({Role.submitter, Role.reviewer, Role.researcher, Role.admin}),
    "evaluations:create": frozenset({Role.researcher, Role.admin}),
    "evaluations:read": frozenset({Role.researcher, Role.reviewer, Role.admin}),
    "keys:admin": frozenset({Role.admin}),
    "metrics:read": frozenset({Role.admin}),
    "reviews:write": frozenset({Role.reviewer, Role.admin}),
    # Patient attributes (name, ID, birth date, accession number) in API answers: radiologists reading
    # a case need them; integrations that submit, and researchers, do not.
    "phi:read": frozenset({Role.reviewer, Role.admin}),
}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    name: str
    role: Role
    secret: str  # the whole key; shown once, never stored


def create_key(session: Session, name: str, role: Role) -> NewKey:
    """Create and store a key; the caller commits. Returns the only copy of the secret."""
    key_id = secrets.token_hex(6)
    secret = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=key_id, name=name, role=role.value, key_hash=hash_key(secret)))
    return NewKey(id=key_id, name=name, role=role, secret=secret)


def find_key(session: Session, presented: str) -> ApiKey | None:
    """The active key matching `presented`, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(presented)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def allowed(role: str, permission: str) -> bool:
    return Role(role) in PERMISSIONS[permission]


def has_admin_key(session: Session) -> bool:
    return (
        session.scalar(select(ApiKey.id).where(ApiKey.role == Role.admin.value, ApiKey.revoked_at.is_(None)))
        is not None
    )
