"""The fleet: enrollment tokens, devices, their tags and groups, their telemetry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from cloud_registry import devices as device_records
from cloud_registry.api.deps import Admin, Deployer, ReadOnly, RegistryDep, SessionDep
from edgebase.ids import SLUG_PATTERN
from registry_api import schemas

router = APIRouter(tags=["devices"])
DeviceName = Annotated[str, PathParam(pattern=SLUG_PATTERN)]


@router.post("/enrollment-tokens", status_code=201, summary="Create a one-time enrollment token")
def create_enrollment_token(
    body: schemas.EnrollmentTokenCreate, session: SessionDep, registry: RegistryDep, principal: Deployer
) -> schemas.EnrollmentTokenCreated:
    row, secret = device_records.create_enrollment_token(
        session, body=body, created_by=principal.name, default_ttl_s=registry.settings.enroll_token_ttl_s
    )
    session.commit()
    return schemas.EnrollmentTokenCreated(
        token=secret, expires_at=row.expires_at, group=row.group, tags=row.tags, name=row.name
    )


@router.get("/devices", summary="List devices")
def list_devices(
    session: SessionDep,
    registry: RegistryDep,
    principal: ReadOnly,
    target: Annotated[str | None, Query(max_length=64)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
) -> list[schemas.DeviceInfo]:
    timeout = registry.settings.presence_timeout_s
    return [
        device_records.device_info(d, presence_timeout_s=timeout)
        for d in device_records.list_devices(session, target=target, group=group, tag=tag, online=online)
    ]


@router.get("/devices/{name}", summary="One device")
def get_device(
    name: DeviceName, session: SessionDep, registry: RegistryDep, principal: ReadOnly
) -> schemas.DeviceInfo:
    return device_records.device_info(
        device_records.get_device(session, name=name), presence_timeout_s=registry.settings.presence_timeout_s
    )


@router.patch("/devices/{name}", summary="Change a device's group or tags")
def update_device(
    name: DeviceName,
    body: schemas.DeviceUpdate,
    session: SessionDep,
    registry: RegistryDep,
    principal: Deployer,
) -> schemas.DeviceInfo:
    device = device_records.update_device(session, name=name, body=body)
    session.commit()
    return device_records.device_info(device, presence_timeout_s=registry.settings.presence_timeout_s)


@router.delete("/devices/{name}", summary="Revoke a device: its token and MQTT password stop working")
def revoke_device(
    name: DeviceName, session: SessionDep, registry: RegistryDep, principal: Admin
) -> schemas.DeviceInfo:
    device, publications = device_records.revoke_device(session, name=name)
    session.commit()
    registry.publish(publications)
    registry.write_broker_files()
    return device_records.device_info(device, presence_timeout_s=registry.settings.presence_timeout_s)


@router.get("/devices/{name}/telemetry", summary="A device's recent telemetry, oldest first")
def device_telemetry(
    name: DeviceName,
    session: SessionDep,
    principal: ReadOnly,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[schemas.TelemetryPoint]:
    device = device_records.get_device(session, name=name)
    return [
        device_records.telemetry_point(row)
        for row in device_records.device_telemetry(session, device=device, limit=limit)
    ]
