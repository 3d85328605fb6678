"""API tokens: create (shown once), list, revoke. Admin only."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_registry import crud
from cloud_registry.api.deps import Admin, SessionDep
from registry_api import schemas

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, summary="Create an API token")
def create_token(body: schemas.TokenCreate, session: SessionDep, principal: Admin) -> schemas.TokenCreated:
    row, secret = crud.create_api_token(session, name=body.name, role=body.role)
    session.commit()
    return schemas.TokenCreated(name=row.name, role=row.role, created_at=row.created_at, token=secret)  # type: ignore[arg-type]


@router.get("", summary="List API tokens (never their secrets)")
def list_tokens(session: SessionDep, principal: Admin) -> list[schemas.TokenInfo]:
    return [schemas.TokenInfo.model_validate(t, from_attributes=True) for t in crud.list_api_tokens(session)]


@router.delete("/{name}", summary="Revoke an API token")
def revoke_token(name: str, session: SessionDep, principal: Admin) -> schemas.TokenInfo:
    row = crud.revoke_api_token(session, name=name)
    session.commit()
    return schemas.TokenInfo.model_validate(row, from_attributes=True)
