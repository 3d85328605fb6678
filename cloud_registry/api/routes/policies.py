"""A model's retraining setup: its policy, the source model its jobs start from, and runs by hand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from cloud_registry import crud, retraining, samples
from cloud_registry.api.deps import Deployer, ReadOnly, RegistryDep, SessionDep
from cloud_registry.api.uploads import BINARY_BODY, received
from cloud_registry.jobs.records import job_info
from edgebase.ids import NAME_PATTERN
from registry_api import retraining as rs
from registry_api import schemas

router = APIRouter(tags=["retraining"])
ModelName = Annotated[str, PathParam(pattern=NAME_PATTERN)]
VersionNumber = Annotated[int, PathParam(ge=1, le=schemas.INT32_MAX)]


@router.get(
    "/models/{name}/retraining-policy", summary="A model's retraining policy, with what its triggers see"
)
def get_policy(
    name: ModelName, session: SessionDep, registry: RegistryDep, principal: ReadOnly
) -> rs.PolicyInfo:
    model = crud.get_model(session, name=name)
    record = retraining.require_policy(session, model=model)
    return retraining.policy_info(session, record, model, interval_s=registry.settings.drift_interval_s)


@router.put("/models/{name}/retraining-policy", summary="Set a model's retraining policy (a new revision)")
def set_policy(
    name: ModelName,
    body: rs.RetrainingPolicy,
    session: SessionDep,
    registry: RegistryDep,
    principal: Deployer,
) -> rs.PolicyInfo:
    record = retraining.set_policy(session, model_name=name, policy=body, actor=principal.name)
    session.commit()
    model = crud.get_model(session, name=name)
    return retraining.policy_info(session, record, model, interval_s=registry.settings.drift_interval_s)


@router.delete(
    "/models/{name}/retraining-policy", status_code=204, summary="Remove a model's retraining policy"
)
def delete_policy(name: ModelName, session: SessionDep, principal: Deployer) -> None:
    retraining.delete_policy(session, model_name=name)
    session.commit()


@router.post(
    "/models/{name}/retrain",
    status_code=201,
    summary="Queue a retraining job by hand",
    responses={409: {"description": "No policy, a job already active, or too few labeled samples"}},
)
def retrain(
    name: ModelName, session: SessionDep, principal: Deployer, body: rs.ManualRetrain | None = None
) -> rs.JobInfo:
    job = retraining.manual_job(
        session, model_name=name, body=body or rs.ManualRetrain(), actor=principal.name
    )
    session.commit()
    return job_info(job)


def _store_source(registry, name: str, version: int, path, sha256: str, size: int) -> rs.SourceStored:  # type: ignore[no-untyped-def]
    from cloud_registry import db

    with db.transaction(registry.factory) as session:
        row = crud.get_version(session, model=name, version=version)
        if sha256 != row.source_sha256:
            raise crud.Invalid(
                f"this file's sha256 is {sha256[:12]}…; {name} v{version} was built from source "
                f"{row.source_sha256[:12]}… (upload the exact file given to edgectl build)"
            )
        stored = registry.store.put(sha256, path)
        samples.ensure_blob(session, sha256, size)
    return rs.SourceStored(model=name, version=version, source_sha256=sha256, size=size, stored_bytes=stored)


@router.put(
    "/models/{name}/versions/{version}/source",
    summary="Upload a version's source model (its weights), which retraining jobs start from",
    description="The body is the exact file `edgectl build` took; its sha256 must be the version's source hash.",
    openapi_extra=BINARY_BODY,
    responses={
        413: {"description": "Larger than the upload limit"},
        422: {"description": "Not this version's source"},
    },
)
async def upload_source(
    name: ModelName, version: VersionNumber, request: Request, registry: RegistryDep, principal: Deployer
) -> rs.SourceStored:
    async with received(request, registry.settings.max_upload_bytes, what="source model") as body:
        try:
            return await run_in_threadpool(
                _store_source, registry, name, version, body.path, body.sha256, body.size
            )
        except crud.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
