"""Retraining policies and their triggers: when a model gets a retraining job.

A policy (`registry_api.retraining.RetrainingPolicy`) is stored per model with a revision. Every
`retrain_interval_s` the registry evaluates the enabled policies (`evaluate_triggers`):

- drift: a version's score in one of the policy's groups has been above the threshold, tick after
  tick, for `sustained_s`;
- labeled_samples: `min_new` labeled samples came in after the data of the model's last job;
- schedule: a new slot of `every_s` seconds began after the policy was set;
- manual: `POST /api/v1/models/{name}/retrain` (`manual_job`).

A trigger fires only while the model has no queued or running job, after the cooldown, and with at
least `min_labeled_samples` labeled samples. A drift trigger also needs new evidence: a score counts
only when its whole window came after the model's last job ended, and the drift of a version that a
finished job already retrained from counts again only once new labels came in (`new_evidence`); the
version that job made is judged on its own drift, once it is live. Each firing has a key (the drift
run's first tick, the newest labeled sample, the schedule slot) and `(model, trigger_key)` is unique in
the database: a replica that evaluates the same state again, or a registry restarted mid-evaluation,
cannot make a second job of the same event.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_registry import crud, drift
from cloud_registry import models as m
from cloud_registry.crud import Conflict, NotFound
from cloud_registry.samples import labeled_query
from registry_api import retraining as rs

log = logging.getLogger("cloud_registry.retraining")
OUTCOME_STATES = ("succeeded", "rejected")  # a job that trained and judged a candidate


# --------------------------------------------------------------------------- policies


def get_policy(session: Session, *, model_id: int) -> m.RetrainingPolicyRecord | None:
    return session.scalar(
        select(m.RetrainingPolicyRecord).where(m.RetrainingPolicyRecord.model_id == model_id)
    )


def require_policy(session: Session, *, model: m.Model) -> m.RetrainingPolicyRecord:
    record = get_policy(session, model_id=model.id)
    if record is None:
        raise NotFound(f"model {model.name!r} has no retraining policy (edgectl retrain policy set)")
    return record


def set_policy(
    session: Session, *, model_name: str, policy: rs.RetrainingPolicy, actor: str
) -> m.RetrainingPolicyRecord:
    model = crud.get_model(session, name=model_name)
    record = get_policy(session, model_id=model.id)
    now = time.time()
    if record is None:
        record = m.RetrainingPolicyRecord(
            model_id=model.id, revision=0, policy={}, created_at=now, updated_at=now, updated_by=actor
        )
        session.add(record)
    record.revision += 1
    record.policy = policy.model_dump(mode="json")
    record.updated_at, record.updated_by = now, actor
    session.flush()
    return record


def delete_policy(session: Session, *, model_name: str) -> None:
    model = crud.get_model(session, name=model_name)
    session.delete(require_policy(session, model=model))


def policy_info(
    session: Session, record: m.RetrainingPolicyRecord, model: m.Model, *, interval_s: float
) -> rs.PolicyInfo:
    policy = rs.RetrainingPolicy.model_validate(record.policy)
    labeled = labeled_count(session, model_id=model.id, groups=policy.groups)
    new = labeled_count(
        session, model_id=model.id, groups=policy.groups, after_row=_last_data_row(session, model.id)
    )
    active = active_job(session, model_id=model.id)
    series = []
    if policy.triggers.drift is not None:
        for (version, group), rows in _drift_series(
            session, model.id, policy, since=time.time() - 86400
        ).items():
            series.append(
                {
                    "version": version,
                    "group": group,
                    "latest": rows[-1].at,
                    policy.triggers.drift.metric: drift.trigger_value(rows[-1], policy.triggers.drift),
                    "above_since": _above_since_at(rows, policy.triggers.drift, interval_s),
                }
            )
    blocked = None
    if active is None and labeled < policy.min_labeled_samples:
        fired = _fire(
            session, model, record, policy, time.time(), last_job_end(session, model.id), interval_s
        )
        blocked = (
            f"{f'the {fired[0]} trigger fires, but ' if fired else ''}no job can start for want of labels: "
            f"{labeled} labeled samples, the policy needs {policy.min_labeled_samples} (edgectl retrain label)"
        )
    return rs.PolicyInfo(
        model=model.name,
        revision=record.revision,
        created_at=record.created_at,
        updated_at=record.updated_at,
        updated_by=record.updated_by,
        policy=policy,
        status=rs.PolicyStatus(
            labeled_samples=labeled,
            new_labeled_samples=new,
            active_job=active.id if active else None,
            drift=series,
            blocked=blocked,
        ),
    )


# --------------------------------------------------------------------------- what the triggers look at


def labeled_count(session: Session, *, model_id: int, groups: list[str], after_row: int = 0) -> int:
    query = labeled_query(model_id, groups).where(m.Sample.id > after_row)
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def _newest_labeled_row(session: Session, model_id: int, groups: list[str]) -> int:
    query = labeled_query(model_id, groups).with_only_columns(func.max(m.Sample.id))
    return session.scalar(query) or 0


def _last_data_row(session: Session, model_id: int) -> int:
    """The newest sample row the model's last job trained on (0: none yet)."""
    return (
        session.scalar(
            select(func.max(m.DatasetSnapshot.last_sample_row)).where(m.DatasetSnapshot.model_id == model_id)
        )
        or 0
    )


def last_job_end(session: Session, model_id: int) -> float | None:
    """When the model's last job ended (or was made, if it never ran): where new drift evidence begins."""
    return session.scalar(
        select(func.max(func.coalesce(m.RetrainingJob.finished_at, m.RetrainingJob.created_at))).where(
            m.RetrainingJob.model_id == model_id
        )
    )


def _retrained_from(session: Session, model_id: int, version: int) -> bool:
    """A job that ran to an outcome (a candidate accepted or refused) started from this version."""
    return bool(
        session.scalar(
            select(m.RetrainingJob.id)
            .where(
                m.RetrainingJob.model_id == model_id,
                m.RetrainingJob.parent_version == version,
                m.RetrainingJob.state.in_(OUTCOME_STATES),
            )
            .limit(1)
        )
    )


def new_evidence(session: Session, *, model_id: int, groups: list[str], before: float | None = None) -> int:
    """Labels given (new samples labeled, or labels changed) after the dataset of the model's newest job
    that ran to an outcome (of those made before `before`): 0 means a job would train on that data again."""
    query = (
        select(func.max(m.DatasetSnapshot.created_at))
        .join(m.RetrainingJob, m.RetrainingJob.snapshot_id == m.DatasetSnapshot.id)
        .where(
            m.DatasetSnapshot.model_id == model_id,
            m.RetrainingJob.state.in_(OUTCOME_STATES),
        )
    )
    if before is not None:
        query = query.where(m.DatasetSnapshot.created_at < before)
    last = session.scalar(query)
    labeled = labeled_query(model_id, groups)
    if last is not None:
        labeled = labeled.where(m.Sample.labeled_at > last)
    if before is not None:
        labeled = labeled.where(m.Sample.labeled_at < before)
    return session.scalar(select(func.count()).select_from(labeled.subquery())) or 0


def active_job(session: Session, *, model_id: int) -> m.RetrainingJob | None:
    return session.scalar(
        select(m.RetrainingJob)
        .where(m.RetrainingJob.model_id == model_id, m.RetrainingJob.state.in_(rs.ACTIVE_JOB_STATES))
        .order_by(m.RetrainingJob.id)
        .limit(1)
    )


def _drift_series(
    session: Session, model_id: int, policy: rs.RetrainingPolicy, *, since: float
) -> dict[tuple[int, str], list[m.DriftScore]]:
    series: dict[tuple[int, str], list[m.DriftScore]] = {}
    for row in drift.history(session, model_id=model_id, since=since, limit=100_000):
        if policy.groups and row.device_group not in policy.groups:
            continue
        series.setdefault((row.model_version, row.device_group), []).append(row)
    return series


def _above_since_at(rows: list[m.DriftScore], trigger: rs.DriftTrigger, interval_s: float) -> float | None:
    first = drift.above_since(rows, trigger, now=rows[-1].at, interval_s=interval_s) if rows else None
    return first.at if first else None


def default_parent(session: Session, *, model: m.Model, groups: list[str]) -> int:
    """The version most devices of the groups run; else the newest version with a bundle."""
    query = select(m.Device.current_version).where(
        m.Device.model_name == model.name,
        m.Device.current_version.is_not(None),
        m.Device.revoked_at.is_(None),
    )
    if groups:
        query = query.where(m.Device.group.in_(groups))
    known = {v.version for v in model.versions if v.artifacts}
    counts = Counter(v for v in session.scalars(query) if v in known)
    if counts:
        return max(counts.items(), key=lambda item: (item[1], item[0]))[0]
    if not known:
        raise Conflict(f"model {model.name!r} has no version with a bundle to retrain from")
    return max(known)


# --------------------------------------------------------------------------- jobs


def create_job(
    session: Session,
    *,
    model: m.Model,
    record: m.RetrainingPolicyRecord,
    trigger: str,
    key: str,
    details: dict[str, Any],
    parent_version: int,
    actor: str,
) -> m.RetrainingJob | None:
    """A queued job for this trigger event; None when a job of the same (model, key) exists already."""
    if session.scalar(
        select(m.RetrainingJob.id).where(
            m.RetrainingJob.model_id == model.id, m.RetrainingJob.trigger_key == key
        )
    ):
        return None
    job = m.RetrainingJob(
        model_id=model.id,
        trigger=trigger,
        trigger_key=key,
        trigger_details=details,
        policy_revision=record.revision,
        policy=record.policy,
        parent_version=parent_version,
        state="queued",
        created_at=time.time(),
        created_by=actor,
    )
    try:
        with session.begin_nested():  # another replica may insert the same key right now
            session.add(job)
            session.flush()
    except IntegrityError:
        return None
    log.info("%s: job %d queued (%s: %s), parent v%d", model.name, job.id, trigger, key, parent_version)
    return job


def manual_job(session: Session, *, model_name: str, body: rs.ManualRetrain, actor: str) -> m.RetrainingJob:
    model = crud.get_model(session, name=model_name)
    record = require_policy(session, model=model)
    policy = rs.RetrainingPolicy.model_validate(record.policy)
    running = active_job(session, model_id=model.id)
    if running is not None:
        raise Conflict(f"{model_name} has a {running.state} retraining job already (job {running.id})")
    labeled = labeled_count(session, model_id=model.id, groups=policy.groups)
    if labeled < policy.min_labeled_samples:
        raise Conflict(
            f"{model_name} has {labeled} labeled samples; its policy needs {policy.min_labeled_samples} "
            "(upload labels with edgectl retrain label)"
        )
    if body.parent_version is not None:
        parent = crud.get_version(session, model=model_name, version=body.parent_version)
        if not parent.artifacts:
            raise Conflict(f"{model_name} v{body.parent_version} has no bundle to retrain from")
        parent_version = body.parent_version
    else:
        parent_version = default_parent(session, model=model, groups=policy.groups)
    job = create_job(
        session,
        model=model,
        record=record,
        trigger="manual",
        key=f"manual:{uuid.uuid4().hex}",
        details={"reason": body.reason or "by hand", "labeled_samples": labeled},
        parent_version=parent_version,
        actor=actor,
    )
    assert job is not None  # a fresh key
    return job


def _fire(  # type: ignore[no-untyped-def]
    session: Session,
    model: m.Model,
    record: m.RetrainingPolicyRecord,
    policy: rs.RetrainingPolicy,
    now: float,
    last_job_at: float | None,
    interval_s: float,
):
    """(trigger, key, details, parent version) of the first trigger that fires, or None.

    Drift counts only scores whose window began after the model's last job ended (`last_job_at`): after
    a job, drift must stay up for another `sustained_s` on telemetry of its own. A version some finished
    job already retrained from needs new labels too (`new_evidence`).
    """
    triggers = policy.triggers
    if triggers.drift is not None:
        since = max(now - triggers.drift.sustained_s - 86400, last_job_at or 0.0)
        fresh_labels = None
        for (version, group), rows in sorted(_drift_series(session, model.id, policy, since=since).items()):
            rows = [r for r in rows if last_job_at is None or r.at - r.window_s >= last_job_at]
            first = drift.above_since(rows, triggers.drift, now=now, interval_s=interval_s)
            if first is not None and _retrained_from(session, model.id, version):
                if fresh_labels is None:
                    fresh_labels = new_evidence(session, model_id=model.id, groups=policy.groups) > 0
                if not fresh_labels:
                    continue  # the loop answered this drift already: the same data would make the same model
            if first is not None and now - first.at >= triggers.drift.sustained_s:
                latest = rows[-1]
                details = {
                    "version": version,
                    "group": group,
                    "metric": triggers.drift.metric,
                    "threshold": triggers.drift.threshold,
                    "value": drift.trigger_value(latest, triggers.drift),
                    "psi_class": latest.psi_class,
                    "above_since": first.at,
                    "sustained_s": round(now - first.at, 3),
                }
                return "drift", f"drift:v{version}:{group or '-'}:{first.bucket}", details, version
    if triggers.labeled_samples is not None:
        after = _last_data_row(session, model.id)
        new = labeled_count(session, model_id=model.id, groups=policy.groups, after_row=after)
        if new >= triggers.labeled_samples.min_new:
            newest = _newest_labeled_row(session, model.id, policy.groups)
            details = {"new_labeled_samples": new, "min_new": triggers.labeled_samples.min_new}
            return "labeled_samples", f"samples:{newest}", details, None
    if triggers.schedule is not None:
        slot = int(now // triggers.schedule.every_s)
        if slot > int(record.updated_at // triggers.schedule.every_s):
            return "schedule", f"schedule:{slot}", {"every_s": triggers.schedule.every_s, "slot": slot}, None
    return None


def evaluate_triggers(
    session: Session, *, interval_s: float, now: float | None = None, actor: str = "retraining"
) -> list[m.RetrainingJob]:
    """Queue a job for every enabled policy whose trigger fires (see the module's doc)."""
    now = time.time() if now is None else now
    jobs = []
    for record in session.scalars(select(m.RetrainingPolicyRecord).order_by(m.RetrainingPolicyRecord.id)):
        policy = rs.RetrainingPolicy.model_validate(record.policy)
        model = session.get(m.Model, record.model_id)
        if not policy.enabled or model is None or active_job(session, model_id=model.id) is not None:
            continue
        last = session.scalar(
            select(func.max(m.RetrainingJob.created_at)).where(
                m.RetrainingJob.model_id == model.id, m.RetrainingJob.trigger != "manual"
            )
        )
        if last is not None and now - last < policy.cooldown_s:
            continue
        fired = _fire(session, model, record, policy, now, last_job_end(session, model.id), interval_s)
        if fired is None:
            continue
        trigger, key, details, parent = fired
        labeled = labeled_count(session, model_id=model.id, groups=policy.groups)
        if labeled < policy.min_labeled_samples:
            continue  # fires again, with the same key, once the labels are in
        try:
            parent = parent or default_parent(session, model=model, groups=policy.groups)
        except Conflict as exc:
            log.warning("%s: %s", model.name, exc)
            continue
        job = create_job(
            session,
            model=model,
            record=record,
            trigger=trigger,
            key=key,
            details={**details, "labeled_samples": labeled},
            parent_version=parent,
            actor=actor,
        )
        if job is not None:
            jobs.append(job)
    return jobs
