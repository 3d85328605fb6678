"""The registry's side of the retraining loop, one `tick` every `retrain_interval_s`:

1. score fleet drift (every `drift_interval_s`, `cloud_registry.drift`);
2. evaluate the retraining policies' triggers (`cloud_registry.retraining`): new queued jobs;
3. collect attempts that ended and finalize them: register the candidate (verified like an upload),
   compare it with its parent on the held-out samples, then start its canary rollout or mark the job
   rejected with the figures;
4. renew the leases of the attempts this replica runs;
5. queue again the running jobs whose replica stopped renewing (it crashed or was killed);
6. claim queued jobs while the runner has room, stage their inputs (`jobs.staging`) and submit them.

Claiming is one conditional UPDATE (`state = 'queued'` to `'running'`, attempt + 1), so of several
replicas, or a restarted one and a late one, exactly one gets an attempt; an attempt's outcome is
taken only while the job is still running that attempt under this replica's claim, in the same
transaction that registers the version. A restart therefore neither loses a job (it is queued again,
or never left the queue) nor makes a second version of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import db, drift, retraining
from cloud_registry import models as m
from cloud_registry.core.config import Settings
from cloud_registry.crud import Conflict, Invalid, NotFound, Publication
from cloud_registry.jobs import canary, candidate, staging
from cloud_registry.jobs.records import job_event, tail
from cloud_registry.jobs.runners import Finished, JobRunner, make_runner
from cloud_registry.jobs.spec import LOG_FILE, STATUS_FILE, JobOutcome
from cloud_registry.jobs.staging import StageError
from cloud_registry.jobs.verdict import decide
from cloud_registry.storage import ArtifactStore
from edgebundle.errors import BundleError
from registry_api import retraining as rs
from registry_api import schemas

log = logging.getLogger("cloud_registry.jobs")
MAX_ATTEMPTS = 3  # a job whose attempts keep losing their registry (it crashes the host?) fails after this
UNPACK_FACTOR = 4


class JobManager:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        settings: Settings,
        store: ArtifactStore,
        trusted_keys: dict[str, Ed25519PublicKey],
        publish: Callable[[list[Publication]], None],
        runner: JobRunner | None = None,
        clock: Callable[[], float] = time.time,
        command_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.command_key = command_key  # to roll back a canary that fails its field checks
        self.factory, self.settings, self.store = factory, settings, store
        self.trusted_keys, self.publish, self.clock = trusted_keys, publish, clock
        self.runner = runner
        self.instance = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._last_drift = 0.0

    def start(self) -> None:
        if self.runner is None:
            self.runner = make_runner(
                self.settings.jobs_runner,
                max_workers=self.settings.jobs_max_workers,
                ray_address=self.settings.ray_address,
            )

    def close(self) -> None:
        """Stop this replica's attempts and give their jobs back to the queue at once (no lease wait)."""
        if self.runner is None:
            return
        self.runner.close()
        with db.transaction(self.factory) as session:
            session.execute(
                update(m.RetrainingJob)
                .where(m.RetrainingJob.state == "running", m.RetrainingJob.claimed_by == self.instance)
                .values(state="queued", claimed_by=None, lease_until=None, phase=None)
            )

    # ------------------------------------------------------------------ the loop

    def tick(self) -> None:
        now = self.clock()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("drift scoring", lambda: self.score_drift(now)),
            ("trigger evaluation", lambda: self.evaluate_triggers(now)),
            ("collecting", self.collect),
            ("canary checks", self.watch_canaries),
            ("leases", lambda: self.renew_leases(now)),
            ("requeueing", lambda: self.requeue_lost(now)),
            ("starting", lambda: self.start_queued(now)),
        ]
        for name, step in steps:
            try:
                step()
            except Exception:  # one failing step must not stop the others
                log.exception("retraining loop: %s failed", name)

    def score_drift(self, now: float, *, force: bool = False) -> int:
        if not force and now - self._last_drift < self.settings.drift_interval_s:
            return 0
        self._last_drift = now
        with db.transaction(self.factory) as session:
            return drift.score_fleet(
                session,
                window_s=self.settings.drift_window_s,
                interval_s=self.settings.drift_interval_s,
                now=now,
            )

    def evaluate_triggers(self, now: float) -> list[int]:
        with db.transaction(self.factory) as session:
            jobs = retraining.evaluate_triggers(session, now=now, interval_s=self.settings.drift_interval_s)
            return [job.id for job in jobs]

    def collect(self) -> None:
        assert self.runner is not None
        for finished in self.runner.poll():
            self.finalize(finished)

    def watch_canaries(self) -> list[int]:
        """Roll back the rollouts of accepted candidates that fail their field checks (jobs.canary);
        the ids of the jobs rejected so."""
        if self.command_key is None:
            return []
        with self.factory() as session:
            watched = session.execute(
                select(m.RetrainingJob.id, m.RetrainingJob.rollout_id)
                .join(m.Rollout, m.Rollout.id == m.RetrainingJob.rollout_id)
                .where(
                    m.RetrainingJob.state == "succeeded",
                    m.Rollout.state.in_(schemas.ACTIVE_ROLLOUT_STATES),
                )
            ).all()
        rejected = []
        for job_id, rollout_id in watched:
            try:
                with db.transaction(self.factory) as session:
                    crossed, publications = canary.reject_if_crossed(
                        session,
                        job_id,
                        rollout_id,
                        command_key=self.command_key,
                        public_url=self.settings.public_url,
                    )
            except Conflict:
                continue
            if crossed is None:
                continue
            log.warning("job %d: canary rolled back: %s", job_id, crossed)
            rejected.append(job_id)
            self.publish(publications)
        return rejected

    def renew_leases(self, now: float) -> None:
        assert self.runner is not None
        running = self.runner.running()
        if not running:
            return
        with db.transaction(self.factory) as session:
            for job_id, attempt in running:
                job = session.get(m.RetrainingJob, job_id)
                if job is None or (job.state, job.attempt, job.claimed_by) != (
                    "running",
                    attempt,
                    self.instance,
                ):
                    log.info(
                        "job %d attempt %d is no longer ours (%s): stopping it",
                        job_id,
                        attempt,
                        job and job.state,
                    )
                    self.runner.cancel(job_id)
                    continue
                job.lease_until = now + self.settings.jobs_lease_s
                status = Path(job.inputs.get("workdir", "")) / STATUS_FILE
                with contextlib.suppress(OSError, ValueError):
                    job.phase = json.loads(status.read_text()).get("phase", job.phase)

    def requeue_lost(self, now: float) -> list[int]:
        """Running jobs whose replica stopped renewing their lease: queued again (or failed after 3 tries)."""
        assert self.runner is not None
        ours = {job_id for job_id, _ in self.runner.running()}
        requeued = []
        with db.transaction(self.factory) as session:
            lost = session.scalars(
                select(m.RetrainingJob).where(
                    m.RetrainingJob.state == "running", m.RetrainingJob.lease_until < now
                )
            ).all()
            for job in lost:
                if job.id in ours and job.claimed_by == self.instance:
                    continue
                reason = f"attempt {job.attempt} lost its registry ({job.claimed_by}: lease expired)"
                values: dict[str, Any] = {
                    "claimed_by": None,
                    "lease_until": None,
                    "phase": None,
                    "reason": reason,
                }
                if job.attempt >= MAX_ATTEMPTS:
                    values |= {
                        "state": "failed",
                        "finished_at": now,
                        "reason": f"{reason}; gave up after {job.attempt} attempts",
                    }
                else:
                    values["state"] = "queued"
                done = session.execute(
                    update(m.RetrainingJob)
                    .where(
                        m.RetrainingJob.id == job.id,
                        m.RetrainingJob.state == "running",
                        m.RetrainingJob.attempt == job.attempt,
                        m.RetrainingJob.lease_until < now,
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if done.rowcount == 1:
                    log.warning("job %d: %s", job.id, values["reason"])
                    requeued.append(job.id)
        return requeued

    def start_queued(self, now: float) -> list[int]:
        assert self.runner is not None
        started: list[int] = []
        free = self.runner.free()
        if free <= 0:
            return started
        with self.factory() as session:
            queued = session.scalars(
                select(m.RetrainingJob.id)
                .where(m.RetrainingJob.state == "queued")
                .order_by(m.RetrainingJob.id)
                .limit(free)
            ).all()
        for job_id in queued:
            claimed = self.claim(job_id, now)
            if claimed is None:
                continue
            try:
                spec = staging.stage_job(self.settings, self.factory, self.store, job_id)
            except (StageError, Invalid, NotFound, Conflict, BundleError, OSError) as exc:
                self._fail(job_id, claimed, f"cannot start: {exc}", phase="staging")
                continue
            self.runner.submit(job_id, claimed, spec)
            started.append(job_id)
            log.info("job %d attempt %d started on the %s runner", job_id, claimed, self.runner.name)
        return started

    # ------------------------------------------------------------------ claiming and staging

    def claim(self, job_id: int, now: float) -> int | None:
        """Take a queued job for this replica; its attempt number, or None when someone else has it."""
        assert self.runner is not None
        with db.transaction(self.factory) as session:
            taken = session.execute(
                update(m.RetrainingJob)
                .where(m.RetrainingJob.id == job_id, m.RetrainingJob.state == "queued")
                .values(
                    state="running",
                    attempt=m.RetrainingJob.attempt + 1,
                    claimed_by=self.instance,
                    lease_until=now + self.settings.jobs_lease_s,
                    phase="staging",
                    runner=self.runner.name,
                    started_at=func.coalesce(m.RetrainingJob.started_at, now),
                )
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                return None
            job = session.get(m.RetrainingJob, job_id, populate_existing=True)
            assert job is not None
            if job.new_version is None:
                newest_version = session.scalar(
                    select(func.max(m.ModelVersion.version)).where(m.ModelVersion.model_id == job.model_id)
                )
                newest_job = session.scalar(
                    select(func.max(m.RetrainingJob.new_version)).where(
                        m.RetrainingJob.model_id == job.model_id
                    )
                )
                job.new_version = max(newest_version or 0, newest_job or 0) + 1
            return job.attempt

    # ------------------------------------------------------------------ finalizing

    def _own(self, session: Session, job_id: int, attempt: int) -> m.RetrainingJob | None:
        """The job, locked, if it still runs this attempt under this replica's claim."""
        return session.scalar(
            select(m.RetrainingJob)
            .where(
                m.RetrainingJob.id == job_id,
                m.RetrainingJob.state == "running",
                m.RetrainingJob.attempt == attempt,
                m.RetrainingJob.claimed_by == self.instance,
            )
            .with_for_update()
        )

    def _fail(
        self,
        job_id: int,
        attempt: int,
        reason: str,
        outcome: dict[str, Any] | None = None,
        *,
        phase: str | None = None,
    ) -> None:
        """The attempt failed: in `phase`, else the phase its outcome names, else where it was."""
        with db.transaction(self.factory) as session:
            job = self._own(session, job_id, attempt)
            if job is None:
                return
            job.state, job.reason, job.finished_at = "failed", reason[:4000], self.clock()
            job.lease_until = None
            job.phase = phase or (outcome or {}).get("phase") or job.phase
            if outcome is not None:
                job.outcome = outcome
            self._keep_log(job)
            job_event(session, job)
        log.warning("job %d failed: %s", job_id, reason)

    def _keep_log(self, job: m.RetrainingJob) -> None:
        workdir = job.inputs.get("workdir")
        if workdir:
            job.log = tail(Path(workdir) / LOG_FILE)

    def finalize(self, finished: Finished) -> None:
        if finished.outcome is None or not finished.outcome.get("ok"):
            error = finished.error or (finished.outcome or {}).get("error") or "the attempt failed"
            self._fail(finished.job_id, finished.attempt, error, finished.outcome)
            return
        publications: list[Publication] = []
        try:
            with db.transaction(self.factory) as session:
                job = self._own(session, finished.job_id, finished.attempt)
                if job is None:
                    log.info(
                        "job %d attempt %d: outcome of an attempt no longer current, dropped",
                        finished.job_id,
                        finished.attempt,
                    )
                    return
                outcome = JobOutcome.model_validate(finished.outcome)
                policy = rs.RetrainingPolicy.model_validate(job.policy)
                job.outcome = outcome.model_dump(mode="json")
                job.evaluation = outcome.evaluation
                job.finished_at, job.lease_until = self.clock(), None
                self._keep_log(job)
                identical_to = candidate.same_model_as(session, job, outcome)
                candidate.register_candidate(
                    session,
                    job,
                    outcome,
                    store=self.store,
                    trusted_keys=self.trusted_keys,
                    max_bytes=self.settings.max_upload_bytes * UNPACK_FACTOR,
                )
                snapshot = job.snapshot
                accepted, reason = decide(
                    outcome.evaluation,
                    policy.evaluation,
                    model=job.model.name,
                    labels=candidate.class_names(session, job),
                    identical_to=identical_to,
                    new_labels=snapshot is None
                    or retraining.new_evidence(
                        session, model_id=job.model_id, groups=policy.groups, before=snapshot.created_at
                    )
                    > 0,
                )
                job.reason = reason
                if not accepted:
                    job.state, job.phase = "rejected", "rejected"
                    job_event(session, job)
                    log.info("job %d: %s", job.id, reason)
                    return
                job.state, job.phase = "succeeded", "done"
                job_event(session, job)
                if policy.rollout.enabled:
                    publications = candidate.roll_out_candidate(
                        session, job, policy, public_url=self.settings.public_url
                    )
                log.info("job %d: %s", job.id, job.reason)
        except (Invalid, Conflict, NotFound, BundleError, OSError) as exc:
            self._fail(
                finished.job_id,
                finished.attempt,
                f"registering the candidate failed: {exc}",
                finished.outcome,
            )
            return
        self.publish(publications)
