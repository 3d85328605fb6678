"""The retraining loop's canary checks: how an accepted candidate behaves in the field against its parent.

The held-out comparison judges a candidate on labels, and labels can be wrong in ways no check of them
sees. The devices of the canary wave are the other witness: the same devices, their inputs, their
telemetry on the parent before the update and on the candidate since (the rollout's own windows and
evidence rules, `cloud_registry.rollout_evidence`). Two checks (`RolloutPolicy.canary`), each firing strictly
above its threshold:

- prediction mix: PSI of the predicted-class histograms, candidate vs parent: a candidate that answers
  one class for everything moves the mix far more than one that fixes the parent's mistakes;
- confidence drop: the parent's mean top-class confidence minus the candidate's: a retrained model
  should be surer of what its devices see, not less.

A crossed check rolls the rollout back (its updated devices are ordered to the parent again) and the job
is `rejected` in phase `canary`, with the figures in its reason and `outcome.canary`.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from cloud_registry import gates, rollout_evidence, rollouts
from cloud_registry import models as m
from cloud_registry.crud import Publication
from registry_api import retraining as rs
from registry_api import schemas

CANARY_HINT = (
    "check the labels of the job's dataset (edgectl retrain samples MODEL --export); rollout.canary of the "
    "policy sets these checks"
)


def check(session: Session, job: m.RetrainingJob, rollout: m.Rollout) -> tuple[dict[str, Any], str | None]:
    """(the field figures, what crossed) for a job's running rollout; ({}, None) until there is evidence."""
    checks = rs.RetrainingPolicy.model_validate(job.policy).rollout.canary
    entries = [e for e in rollout.devices if e.started_at is not None]
    _, before, after, evidence = rollout_evidence.pooled_windows(session, rollout, entries)
    if not evidence.enough:
        return {}, None
    values = gates.field_values(before, after)
    figures: dict[str, Any] = {**values, "devices": evidence.judged_devices}
    crossed = []
    mix, drop = values["prediction_mix_psi"], values["confidence_drop"]
    if gates.exceeds(mix, checks.max_prediction_mix_psi):
        crossed.append(f"prediction mix PSI {mix:.2f} > {checks.max_prediction_mix_psi:g}")
    if gates.exceeds(drop, checks.max_confidence_drop):
        crossed.append(f"mean confidence {drop:.2f} below the parent's (> {checks.max_confidence_drop:g})")
    if not crossed:
        return figures, None
    devices = evidence.judged_devices
    return figures, (
        f"{', '.join(crossed)} against v{job.parent_version} on the same "
        f"{devices} device{'s' if devices != 1 else ''}"
    )


def reject_if_crossed(
    session: Session,
    job_id: int,
    rollout_id: int,
    *,
    command_key: Ed25519PrivateKey,
    public_url: str,
) -> tuple[str | None, list[Publication]]:
    """Check one watched canary, keeping its figures in the job's outcome; when a check is crossed, roll
    its rollout back and reject the job. What was crossed (None: nothing, or another replica was
    first) and the publications to send once the transaction commits."""
    job = session.get(m.RetrainingJob, job_id)
    rollout = rollouts.get_rollout(session, rollout_id=rollout_id, lock=True)
    if job is None or job.state != "succeeded" or rollout.state not in schemas.ACTIVE_ROLLOUT_STATES:
        return None, []  # another replica was first
    figures, crossed = check(session, job, rollout)
    if figures and (job.outcome or {}).get("canary") != figures:
        job.outcome = {**(job.outcome or {}), "canary": figures}
    if crossed is None:
        return None, []
    _, publications = rollouts.rollback(
        session,
        rollout_id=rollout_id,
        actor=f"retraining-job-{job.id}",
        reason=f"canary checks of retraining job {job.id}: {crossed}",
        command_key=command_key,
        public_url=public_url,
    )
    job.state, job.phase = "rejected", "canary"
    job.reason = (
        f"rejected in the field: {crossed}; rollout {rollout_id} rolled back; "
        f"hint: {CANARY_HINT.replace('MODEL', job.model.name)}"
    )
    return crossed, publications
