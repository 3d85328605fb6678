"""Retraining jobs as the API shows them: one job's record and log, the list, cancelling, its webhook event."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from cloud_registry import samples
from cloud_registry.crud import Conflict, NotFound
from cloud_registry.jobs.spec import LOG_FILE
from registry_api import retraining as rs

LOG_TAIL_BYTES = 64 * 1024


def tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def job_info(job: m.RetrainingJob) -> rs.JobInfo:
    return rs.JobInfo(
        id=job.id,
        model=job.model.name,
        state=job.state,  # type: ignore[arg-type]
        phase=job.phase,
        trigger=job.trigger,  # type: ignore[arg-type]
        trigger_details=job.trigger_details or {},
        parent_version=job.parent_version,
        new_version=job.new_version,
        attempt=job.attempt,
        runner=job.runner,
        policy_revision=job.policy_revision,
        created_at=job.created_at,
        created_by=job.created_by,
        started_at=job.started_at,
        finished_at=job.finished_at,
        dataset=samples.dataset_info(job.snapshot) if job.snapshot else None,
        evaluation=job.evaluation or {},
        outcome=job.outcome or {},
        reason=job.reason,
        rollout_id=job.rollout_id,
    )


def job_log(job: m.RetrainingJob) -> str:
    """The log: live from the attempt's folder while it runs, else what was kept when it ended."""
    workdir = job.inputs.get("workdir")
    if job.state == "running" and workdir:
        return tail(Path(workdir) / LOG_FILE)
    return job.log or ""


def get_job(session: Session, *, job_id: int) -> m.RetrainingJob:
    job = session.get(m.RetrainingJob, job_id)
    if job is None:
        raise NotFound(f"no retraining job {job_id}")
    return job


def list_jobs(
    session: Session, *, model: str | None = None, state: str | None = None, limit: int = 100
) -> list[m.RetrainingJob]:
    query = select(m.RetrainingJob).order_by(m.RetrainingJob.id.desc()).limit(limit)
    if model:
        query = query.join(m.Model).where(m.Model.name == model)
    if state:
        query = query.where(m.RetrainingJob.state == state)
    return list(session.scalars(query))


def cancel_job(session: Session, *, job_id: int, actor: str) -> m.RetrainingJob:
    """A queued or running job stops; the replica running it notices at its next lease renewal."""
    job = get_job(session, job_id=job_id)
    if job.state not in rs.ACTIVE_JOB_STATES:
        raise Conflict(f"job {job_id} is {job.state}; only a queued or running job can be cancelled")
    job.state, job.finished_at, job.lease_until = "cancelled", time.time(), None
    job.reason = f"cancelled by {actor}"
    return job


def job_event(session: Session, job: m.RetrainingJob) -> None:
    """The job's outcome as a webhook event (succeeded, rejected or failed), in the same transaction."""
    from cloud_registry import webhooks

    webhooks.enqueue(
        session,
        event=f"job.{job.state}",
        text=f"Retraining job {job.id} of {job.model.name} {job.state}: {(job.reason or '')[:500]}",
        data={
            "job": job.id,
            "model": job.model.name,
            "state": job.state,
            "phase": job.phase,
            "parent_version": job.parent_version,
            "new_version": job.new_version,
            "reason": (job.reason or "")[:2000],
        },
    )
