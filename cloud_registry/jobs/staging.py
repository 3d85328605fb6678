"""Staging a retraining job's attempt: its inputs copied into the attempt's folder, and its spec.json.

The parent's source model (the weights) and bundles come out of the artifact store, the dataset is
the job's snapshot (made on its first attempt, reused by later ones), and the spec says what the
entry point and the build that follows it get. A missing input is a `StageError`: the job fails with
that reason, before any runner starts.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import crud, db, samples
from cloud_registry import models as m
from cloud_registry.core.config import Settings
from cloud_registry.jobs.spec import SPEC_FILE, JobSpec
from cloud_registry.storage import ArtifactStore
from edgebundle.manifest import Manifest
from registry_api import retraining as rs


class StageError(Exception):
    """The job cannot start: a missing input, too little data, no signing key."""


def source_input_shape(manifest: Manifest) -> list[int]:
    """The model's input shape in its source's layout (a TFLite bundle's artifact takes NHWC)."""
    spec = manifest.artifacts[0].inputs[0]
    shape = [d if d > 0 else 1 for d in spec.shape]
    keras = manifest.source.kind in ("keras", "saved-model")
    if spec.layout == "NHWC" and len(shape) == 4 and not keras:
        return [shape[0], shape[3], shape[1], shape[2]]
    return shape


def default_edgectl() -> list[str]:
    import shutil
    import sys

    found = shutil.which("edgectl")
    return [found] if found else [sys.executable, "-m", "edgectl.main"]


def stage_job(settings: Settings, factory: sessionmaker[Session], store: ArtifactStore, job_id: int) -> Path:
    """Copy the job's inputs into its attempt folder and write spec.json; the spec's path."""
    with db.transaction(factory) as session:
        job = session.get(m.RetrainingJob, job_id)
        assert job is not None and job.new_version is not None
        model = job.model
        policy = rs.RetrainingPolicy.model_validate(job.policy)
        if settings.jobs_sign_key is None or not settings.jobs_sign_key.is_file():
            raise StageError(
                "the registry has no jobs_sign_key (EDGECTL_REGISTRY_JOBS_SIGN_KEY) to sign the bundles a job builds"
            )
        parent = crud.get_version(session, model=model.name, version=job.parent_version)
        if not parent.artifacts:
            raise StageError(f"{model.name} v{parent.version} has no bundle")
        primary = parent.artifacts[0].bundle_manifest()
        if not store.exists(parent.source_sha256):
            raise StageError(
                f"the registry does not hold the source model (the weights) of {model.name} v{parent.version}; "
                f"upload it: edgectl retrain source {model.name} {parent.version} {primary.source.filename}"
            )
        workdir = settings.jobs_path / f"job-{job.id}" / f"attempt-{job.attempt}"
        workdir.mkdir(parents=True, exist_ok=True)
        parent_model = samples.copy_to(
            store,
            parent.source_sha256,
            workdir / "parent" / Path(primary.source.filename).name,
        )
        parent_bundles = {
            a.target: samples.copy_to(store, a.archive_sha256, workdir / "parent" / f"{a.target}.edgebundle")
            for a in parent.artifacts
        }
        if job.snapshot_id is None:
            snapshot = samples.create_snapshot(
                session,
                store,
                model=model,
                groups=policy.groups,
                holdout_fraction=policy.evaluation.holdout_fraction,
                folder=workdir / "data",
            )
            job.snapshot_id = snapshot.id
        else:
            snapshot = job.snapshot
            assert snapshot is not None
            samples.copy_to(store, snapshot.train_sha256, workdir / "data" / "train.npz")
            samples.copy_to(store, snapshot.holdout_sha256, workdir / "data" / "holdout.npz")
        if snapshot.train_samples == 0:
            raise StageError(f"dataset {snapshot.number} has no training samples")
        if snapshot.holdout_samples < policy.evaluation.min_holdout:
            raise StageError(
                f"dataset {snapshot.number} holds out {snapshot.holdout_samples} samples; the policy needs "
                f"{policy.evaluation.min_holdout} (label more samples, or lower evaluation.min_holdout)"
            )
        gates = [
            manifest.validation.max_drop_points
            for manifest in (a.bundle_manifest() for a in parent.artifacts)
            if manifest.validation is not None
        ]
        spec = JobSpec(
            job_id=job.id,
            attempt=job.attempt,
            model=model.name,
            parent_version=parent.version,
            new_version=job.new_version,
            trigger=f"retrain job {job.id}: {job.trigger}"[:100],
            workdir=workdir,
            entry_point=policy.entry_point,
            training_data=policy.training_data or parent.training_data,
            parent_model=parent_model,
            train_data=workdir / "data" / "train.npz",
            holdout_data=workdir / "data" / "holdout.npz",
            labels=list(primary.postprocessing.labels),
            preprocessing=primary.preprocessing.model_dump(mode="json"),
            input_shape=source_input_shape(primary),
            targets={a.target: a.precision for a in parent.artifacts},
            parent_bundles=parent_bundles,
            max_drop=policy.build.max_drop if policy.build.max_drop is not None else max(gates, default=1.0),
            build_extra_args=policy.build.extra_args,
            sign_key=settings.jobs_sign_key.resolve(),
            edgectl=settings.edgectl_command or default_edgectl(),
        )
        spec_path = workdir / SPEC_FILE
        spec_path.write_text(spec.model_dump_json(indent=2))
        job.inputs = {
            "workdir": str(workdir),
            "parent_source_sha256": parent.source_sha256,
            "parent_bundles": {a.target: a.archive_sha256 for a in parent.artifacts},
            "targets": spec.targets,
            "training_data": spec.training_data,
            "dataset": snapshot.number,
            "entry_point": policy.entry_point.model_dump(mode="json"),
            "max_drop": spec.max_drop,
        }
        job.phase = "queued-on-runner"
    return spec_path
