"""Mosquitto's password file and ACL for the enrolled fleet. Admin only: the file holds password hashes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from cloud_registry.api.deps import Admin, RegistryDep

router = APIRouter(prefix="/broker", tags=["broker"])


@router.get(
    "/mosquitto.passwd", response_class=PlainTextResponse, summary="Mosquitto password file ($7$ hashes)"
)
def password_file(registry: RegistryDep, principal: Admin) -> str:
    return registry.broker_files()[0]


@router.get(
    "/mosquitto.acl", response_class=PlainTextResponse, summary="Mosquitto ACL (pattern rules per device)"
)
def acl_file(registry: RegistryDep, principal: Admin) -> str:
    return registry.broker_files()[1]
