"""A job's candidate: registered as a new version (its bundles verified like an upload, its source
model kept for the next job), compared with what exists, and rolled out as a canary when accepted."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_registry import crud, rollouts, samples
from cloud_registry import models as m
from cloud_registry.crud import Conflict, Invalid, Publication
from cloud_registry.jobs.spec import JobOutcome
from cloud_registry.storage import ArtifactStore
from cloud_registry.verify import verify_trusted
from registry_api import retraining as rs
from registry_api import schemas


def class_names(session: Session, job: m.RetrainingJob) -> list[str]:
    parent = crud.get_version(session, model=job.model.name, version=job.parent_version)
    return list(parent.artifacts[0].bundle_manifest().postprocessing.labels) if parent.artifacts else []


def same_model_as(session: Session, job: m.RetrainingJob, outcome: JobOutcome) -> int | None:
    """The version of the model whose source is the very file the job trained (None: a new model)."""
    if outcome.model_sha256 is None:
        return None
    return session.scalar(
        select(func.min(m.ModelVersion.version)).where(
            m.ModelVersion.model_id == job.model_id,
            m.ModelVersion.source_sha256 == outcome.model_sha256,
            m.ModelVersion.version != job.new_version,
        )
    )


def register_candidate(
    session: Session,
    job: m.RetrainingJob,
    outcome: JobOutcome,
    *,
    store: ArtifactStore,
    trusted_keys: dict[str, Ed25519PublicKey],
    max_bytes: int,
) -> None:
    """The candidate's bundles, verified like an upload, and its source model: a new version with lineage."""
    model = job.model
    source_sha256 = None
    for target, archive in sorted(outcome.bundles.items()):
        manifest = verify_trusted(archive, trusted_keys, max_bytes)
        if (manifest.name, manifest.version, manifest.target) != (model.name, job.new_version, target):
            raise Invalid(
                f"the job built {manifest.name} v{manifest.version} for {manifest.target}, "
                f"not {model.name} v{job.new_version} for {target}"
            )
        sha256 = samples.put_file(session, store, archive)
        crud.register_artifact(
            session,
            manifest=manifest,
            archive_sha256=sha256,
            archive_size=archive.stat().st_size,
            uploaded_by=f"retraining-job-{job.id}",
        )
        source_sha256 = manifest.source.sha256
    if outcome.model is not None and outcome.model_sha256 == source_sha256:
        samples.put_file(session, store, outcome.model)  # the next job's parent weights
    version = crud.get_version(session, model=model.name, version=job.new_version)
    snapshot = job.snapshot
    if snapshot is not None:
        version.data_snapshots = {
            **(version.data_snapshots or {}),
            f"feedback-{snapshot.number}-train": snapshot.train_sha256,
            f"feedback-{snapshot.number}-holdout": snapshot.holdout_sha256,
        }


def roll_out_candidate(
    session: Session, job: m.RetrainingJob, policy: rs.RetrainingPolicy, *, public_url: str
) -> list[Publication]:
    selection = policy.rollout.selection
    if selection is None:
        if len(policy.groups) == 1:
            selection = schemas.Selection(group=policy.groups[0])
        elif policy.groups:
            names = session.scalars(select(m.Device.name).where(m.Device.group.in_(policy.groups))).all()
            selection = schemas.Selection(devices=sorted(names))
        else:
            selection = schemas.Selection()
    body = schemas.RolloutCreate(
        model=job.model.name,
        version=job.new_version,
        selection=selection,
        waves=policy.rollout.waves,
        policy=schemas.GatePolicy.model_validate(policy.rollout.gates.model_dump()),
    )
    try:
        with session.begin_nested():
            rollout, publications = rollouts.create_rollout(
                session, body=body, actor=f"retraining-job-{job.id}", public_url=public_url
            )
    except Conflict as exc:
        job.reason = f"{job.reason}; no rollout: {exc}"
        return []
    job.rollout_id = rollout.id
    job.reason = f"{job.reason}; canary rollout {rollout.id} started"
    return publications
