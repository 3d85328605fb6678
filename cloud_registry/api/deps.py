"""Typed dependencies: the registry, a database session, and who is calling (API token role or device)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud_registry import crud
from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.core.security import role_allows
from cloud_registry.service import Registry

bearer = HTTPBearer(auto_error=False, description="API token (admin API) or device token (device API).")
UI_COOKIE = "edgectl_token"


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def get_session(registry: RegistryDep) -> Iterator[Session]:
    """A session per request. Routes that write commit before they answer (the dependency's own exit may
    run after the response is sent, and a client that reads right after writing must see its write)."""
    with registry.factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def _unauthorized(what: str = "API token") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, f"missing or invalid {what}", headers={"WWW-Authenticate": "Bearer"}
    )


def _principal(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    secret = credentials.credentials if credentials else request.cookies.get(UI_COOKIE)
    if not secret:
        raise _unauthorized()
    row = crud.token_by_secret(session, token=secret)
    if row is None:
        raise _unauthorized()
    return Principal(row.name, row.role)


def require(role: str):  # type: ignore[no-untyped-def]
    def dependency(request: Request, session: SessionDep, credentials: Credentials) -> Principal:
        principal = _principal(request, session, credentials)
        if not role_allows(principal.role, role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role} role; the token is {principal.role}"
            )
        return principal

    return dependency


ReadOnly = Annotated[Principal, Depends(require("read-only"))]
Deployer = Annotated[Principal, Depends(require("deployer"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def current_device(session: SessionDep, credentials: Credentials) -> m.Device:
    if credentials is None:
        raise _unauthorized("device token")
    device = device_records.device_by_token(session, token=credentials.credentials)
    if device is None:
        raise _unauthorized("device token")
    return device


CurrentDevice = Annotated[m.Device, Depends(current_device)]
