"""Sample upload settings per device group, the samples devices uploaded, their inputs, and label files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from cloud_registry import crud, samples
from cloud_registry import models as m
from cloud_registry.api.deps import Deployer, ReadOnly, RegistryDep, SessionDep
from edgebase.ids import NAME_PATTERN
from edgewire.device_api import SampleUploadSettings
from registry_api import retraining as rs
from registry_api import schemas

router = APIRouter(tags=["samples and labels"])
GroupName = Annotated[str, PathParam(pattern=schemas.GROUP_RE)]
ModelName = Annotated[str, PathParam(pattern=NAME_PATTERN)]
SampleId = Annotated[str, PathParam(pattern=rs.SAMPLE_ID_RE)]


@router.get("/groups/{group}/sampling", summary="A device group's sample-upload settings (off by default)")
def get_sampling(group: GroupName, session: SessionDep, principal: ReadOnly) -> rs.GroupSampling:
    return samples.group_info(session, group)


@router.put(
    "/groups/{group}/sampling",
    summary="Switch sample upload on or off for a device group, with its caps",
    description="Devices of the group read this at their next poll (GET /v1/device/config).",
)
def set_sampling(
    group: GroupName, body: SampleUploadSettings, session: SessionDep, principal: Deployer
) -> rs.GroupSampling:
    info = samples.set_group_settings(session, group=group, settings=body, actor=principal.name)
    session.commit()
    return info


@router.get("/models/{name}/samples", summary="Samples devices uploaded for a model, oldest first")
def list_samples(
    name: ModelName,
    session: SessionDep,
    principal: ReadOnly,
    labeled: Annotated[bool | None, Query(description="Only labeled (true) or unlabeled (false).")] = None,
    group: Annotated[str | None, Query(pattern=r"^$|" + schemas.GROUP_RE)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[rs.SampleInfo]:
    model = crud.get_model(session, name=name)
    return samples.list_samples(
        session, model=model, labeled=labeled, group=group, limit=limit, offset=offset
    )


@router.get(
    "/samples/{sample_id}/input",
    summary="A sample's input as a .npy file (deployer: raw device data)",
    response_class=Response,
    responses={200: {"content": {"application/x-npy": {}}}},
)
def sample_input(
    sample_id: SampleId, session: SessionDep, registry: RegistryDep, principal: Deployer
) -> Response:
    row = samples.get_sample(session, sample_id=sample_id)
    return Response(samples.read_bytes(registry.store, row.input_sha256), media_type="application/x-npy")


@router.post(
    "/models/{name}/labels",
    summary="Label samples (a label file's rows): all or nothing",
    responses={422: {"description": "An unknown sample id or a label that is not a class of the model"}},
)
def upload_labels(
    name: ModelName, body: rs.LabelUpload, session: SessionDep, principal: Deployer
) -> rs.LabelResult:
    result = samples.apply_labels(session, model_name=name, body=body, actor=principal.name)
    session.commit()
    return result


@router.get("/models/{name}/datasets", summary="The versions of a model's labeled feedback data")
def list_datasets(name: ModelName, session: SessionDep, principal: ReadOnly) -> list[rs.DatasetInfo]:
    from sqlalchemy import select

    model = crud.get_model(session, name=name)
    rows = session.scalars(
        select(m.DatasetSnapshot)
        .where(m.DatasetSnapshot.model_id == model.id)
        .order_by(m.DatasetSnapshot.number)
    )
    return [samples.dataset_info(row) for row in rows]
