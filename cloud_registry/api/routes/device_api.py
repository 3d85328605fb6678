"""The device-facing API, exactly as edgewire.device_api describes it.

A device token names one device: it reads only its own desired state, fetches
only archives it was told to run, and writes only its own status and telemetry
(a body naming another device is refused).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from cloud_registry import crud, samples
from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.api.deps import CurrentDevice, RegistryDep, SessionDep
from cloud_registry.api.uploads import received
from cloud_registry.ingest import apply_messages
from cloud_registry.service import public_pem
from cloud_registry.storable import fits_columns
from edgewire.device_api import (
    MAX_SAMPLE_REQUEST_BYTES,
    DesiredResponse,
    DeviceConfig,
    EnrollRequest,
    EnrollResponse,
    MqttSettings,
    Paths,
    SampleUpload,
    SampleUploadResult,
)
from edgewire.messages import DesiredModel, Telemetry, UpdateStatus

router = APIRouter(tags=["device API"])
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.post(Paths.enroll, summary="Enroll a device with a one-time token", responses={403: {}, 409: {}})
def enroll(body: EnrollRequest, session: SessionDep, registry: RegistryDep) -> EnrollResponse:
    from targets import UnknownTargetError, get_profile

    try:
        get_profile(body.target)
    except (UnknownTargetError, ValueError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown target {body.target!r}"
        ) from None
    settings = registry.settings
    device, device_token, mqtt_password = device_records.enroll_device(
        session, request=body, fleet=settings.fleet
    )
    session.commit()
    registry.write_broker_files()
    mqtt = None
    host = settings.device_mqtt_host or settings.mqtt_host
    if host:
        mqtt = MqttSettings(
            host=host,
            port=settings.device_mqtt_port or settings.mqtt_port,
            username=device.name,
            password=mqtt_password,
            tls=settings.mqtt_tls,
        )
    return EnrollResponse(
        device=device.name,
        fleet=device.fleet,
        device_token=device_token,
        mqtt=mqtt,
        command_public_keys=[public_pem(registry.command_key)],
    )


@router.get(Paths.desired, summary="This device's desired model")
def desired(device: CurrentDevice) -> DesiredResponse:
    return DesiredResponse(desired=DesiredModel.model_validate(device.desired) if device.desired else None)


def _check_own(device: m.Device, message: UpdateStatus | Telemetry) -> None:
    if (message.fleet, message.device) != (device.fleet, device.name):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device may report only about itself")
    if not fits_columns(message):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a number in the message is out of range")


def _report(body: UpdateStatus | Telemetry, device: m.Device, session: Session) -> Response:
    _check_own(device, body)
    apply_messages(session, [body])
    session.commit()
    return Response(status_code=204)


@router.post(Paths.update, status_code=204, summary="Update status (fallback when MQTT is down)")
def report_update(body: UpdateStatus, device: CurrentDevice, session: SessionDep) -> Response:
    return _report(body, device, session)


@router.post(Paths.telemetry, status_code=204, summary="Telemetry (fallback when MQTT is down)")
def report_telemetry(body: Telemetry, device: CurrentDevice, session: SessionDep) -> Response:
    return _report(body, device, session)


@router.get(Paths.config, summary="This device's settings: sample upload for its group (off by default)")
def device_config(device: CurrentDevice, session: SessionDep) -> DeviceConfig:
    return DeviceConfig(samples=samples.group_settings(session, device.group))


@router.post(
    Paths.samples,
    summary="Upload inputs the model was least sure about (only where switched on for the device's group)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": SampleUpload.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    },
    responses={403: {"description": "Sample upload is off for the group"}, 413: {}, 422: {}},
)
async def upload_samples(
    request: Request, device: CurrentDevice, session: SessionDep, registry: RegistryDep
) -> SampleUploadResult:
    async with received(request, MAX_SAMPLE_REQUEST_BYTES, what="SampleUpload JSON") as body:
        try:
            upload = SampleUpload.model_validate_json(body.path.read_bytes())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid {where}: {first['msg']}"
            ) from None
    if (upload.fleet, upload.device) != (device.fleet, device.name):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device may upload only its own samples")
    result = await run_in_threadpool(
        samples.record_samples, session, registry.store, device=device, upload=upload
    )
    session.commit()
    return result


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive for one `bytes=` range; None when unsatisfiable or not understood."""
    match = _RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        length = int(last)
        return (max(0, size - length), size - 1) if length > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


@router.get(
    Paths.bundle,
    summary="Download an archive this device was told to run",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "Partial content"},
        404: {},
        416: {},
    },
)
def download_bundle(
    archive_sha256: Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$")],
    device: CurrentDevice,
    session: SessionDep,
    registry: RegistryDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    blob = session.get(m.Blob, archive_sha256)
    # The same answer for "no such archive" and "not yours": a device learns nothing about other archives.
    if blob is None or not crud.may_download(session, device=device, archive_sha256=archive_sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such archive for this device")
    size, etag = blob.size, f'"{archive_sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        span = _byte_range(range_header, size)
        if span is None:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end = span
        headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
        return StreamingResponse(
            registry.store.read(archive_sha256, start, end), status_code=206, headers=headers
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(registry.store.read(archive_sha256), status_code=200, headers=headers)
