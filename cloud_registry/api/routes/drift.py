"""Fleet drift per model version and device group, against the build-time reference: the score history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from cloud_registry import crud, drift
from cloud_registry.api.deps import ReadOnly, SessionDep
from edgebase.ids import NAME_PATTERN
from registry_api import retraining as rs
from registry_api import schemas

router = APIRouter(tags=["retraining"])


@router.get("/models/{name}/drift", summary="Drift scores of a model, oldest first")
def drift_history(
    name: Annotated[str, PathParam(pattern=NAME_PATTERN)],
    session: SessionDep,
    principal: ReadOnly,
    version: Annotated[int | None, Query(ge=1, le=schemas.INT32_MAX)] = None,
    group: Annotated[str | None, Query(pattern=r"^$|" + schemas.GROUP_RE)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e12)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[rs.DriftPoint]:
    model = crud.get_model(session, name=name)
    rows = drift.history(session, model_id=model.id, version=version, group=group, since=since, limit=limit)
    return [drift.point(row) for row in rows]
