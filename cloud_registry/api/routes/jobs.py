"""Retraining jobs: list, read (inputs, evaluation, outcome), their log, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse

from cloud_registry.api.deps import Deployer, ReadOnly, SessionDep
from cloud_registry.jobs import records
from edgebase.ids import NAME_PATTERN
from registry_api import retraining as rs

router = APIRouter(prefix="/jobs", tags=["retraining"])
JobId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


@router.get("", summary="Retraining jobs, newest first")
def list_jobs(
    session: SessionDep,
    principal: ReadOnly,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    state: Annotated[rs.JobState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[rs.JobInfo]:
    return [
        records.job_info(job) for job in records.list_jobs(session, model=model, state=state, limit=limit)
    ]


@router.get("/{job_id}", summary="A job: trigger, inputs, held-out figures, outcome")
def get_job(job_id: JobId, session: SessionDep, principal: ReadOnly) -> rs.JobInfo:
    return records.job_info(records.get_job(session, job_id=job_id))


@router.get("/{job_id}/log", summary="A job's log (live while it runs)", response_class=PlainTextResponse)
def job_log(job_id: JobId, session: SessionDep, principal: ReadOnly) -> str:
    return records.job_log(records.get_job(session, job_id=job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel(job_id: JobId, session: SessionDep, principal: Deployer) -> rs.JobInfo:
    job = records.cancel_job(session, job_id=job_id, actor=principal.name)
    session.commit()
    return records.job_info(job)
