"""Models, versions and their per-target bundles; aliases. Uploads verify signature and hashes first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from cloud_registry import crud
from cloud_registry.api.deps import Deployer, ReadOnly, RegistryDep, SessionDep
from cloud_registry.api.uploads import BINARY_BODY, received
from cloud_registry.service import Registry
from cloud_registry.verify import verify_trusted
from edgebase.ids import NAME_PATTERN
from edgebundle.errors import BundleError
from registry_api import schemas

router = APIRouter(tags=["models"])
ModelName = Annotated[str, PathParam(pattern=NAME_PATTERN)]
AliasName = Annotated[str, PathParam(pattern=schemas.ALIAS_RE)]
VersionNumber = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
UNPACK_FACTOR = 4  # an archive may unpack to this many times its upload limit


def _verify_and_store(
    registry: Registry, archive: Path, sha256: str, size: int, uploader: str
) -> schemas.PushResult:
    manifest = verify_trusted(
        archive, registry.trusted_keys, registry.settings.max_upload_bytes * UNPACK_FACTOR
    )
    stored = registry.store.put(sha256, archive)
    with registry.factory() as session, session.begin():
        _artifact, created = crud.register_artifact(
            session, manifest=manifest, archive_sha256=sha256, archive_size=size, uploaded_by=uploader
        )
    return schemas.PushResult(
        model=manifest.name,
        version=manifest.version,
        target=manifest.target,
        archive_sha256=sha256,
        archive_size=size,
        created=created,
        stored_bytes=stored,
    )


@router.post(
    "/bundles",
    status_code=201,
    summary="Upload a signed .edgebundle archive",
    description="The body is the archive's bytes. The signature must verify with a trusted key and every "
    "file must match its hash; the archive is stored by sha256. Pushing the same bundle again is a no-op "
    "(created false).",
    openapi_extra=BINARY_BODY,
    responses={
        413: {"description": "Larger than the upload limit"},
        422: {"description": "Not a valid bundle"},
    },
)
async def upload_bundle(request: Request, registry: RegistryDep, principal: Deployer) -> schemas.PushResult:
    async with received(
        request, registry.settings.max_upload_bytes, what=".edgebundle", suffix=".edgebundle"
    ) as body:
        try:
            return await run_in_threadpool(
                _verify_and_store, registry, body.path, body.sha256, body.size, principal.name
            )
        except BundleError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"bundle refused: {exc}") from None


@router.get("/models", summary="List models")
def list_models(session: SessionDep, principal: ReadOnly) -> list[schemas.ModelSummary]:
    return [crud.model_summary(model) for model in crud.list_models(session)]


@router.get("/models/{name}", summary="A model with every version, its lineage and per-target figures")
def get_model(name: ModelName, session: SessionDep, principal: ReadOnly) -> schemas.ModelInfo:
    model = crud.get_model(session, name=name)
    return schemas.ModelInfo(
        **crud.model_summary(model).model_dump(),
        version_list=[crud.version_info(v, model) for v in model.versions],
    )


@router.get("/models/{name}/versions/{version}", summary="One version")
def get_version(
    name: ModelName, version: VersionNumber, session: SessionDep, principal: ReadOnly
) -> schemas.VersionInfo:
    row = crud.get_version(session, model=name, version=version)
    return crud.version_info(row, row.model)


@router.get("/models/{name}/aliases/{alias}", summary="The version an alias points at")
def get_alias(
    name: ModelName, alias: AliasName, session: SessionDep, principal: ReadOnly
) -> schemas.AliasInfo:
    row = crud.resolve_alias(session, model=name, alias=alias)
    return schemas.AliasInfo(model=name, alias=alias, version=row.version)


@router.put(
    "/models/{name}/aliases/{alias}", summary="Point an alias (production, staging, ...) at a version"
)
def set_alias(
    name: ModelName, alias: AliasName, body: schemas.AliasSet, session: SessionDep, principal: Deployer
) -> schemas.AliasInfo:
    crud.set_alias(session, model=name, alias=alias, version=body.version)
    session.commit()
    return schemas.AliasInfo(model=name, alias=alias, version=body.version)


@router.delete("/models/{name}/aliases/{alias}", status_code=204, summary="Remove an alias")
def delete_alias(name: ModelName, alias: AliasName, session: SessionDep, principal: Deployer) -> None:
    crud.delete_alias(session, model=name, alias=alias)
    session.commit()
