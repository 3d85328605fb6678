"""Samples devices upload, their labels, and the versioned datasets made of them.

- Sample upload is off unless switched on for a device group (`DeviceGroup.sample_upload`); the
  daily cap per device is enforced here, whatever the device counts.
- Each input is stored in the artifact store as a `.npy` file by its sha256 (content-addressed, like
  bundles); the `samples` row holds what the model said and, once someone uploads a label file, the label.
- A `DatasetSnapshot` is a version of a model's labeled data: a train and a held-out `.npz`
  (x, y, ids) in the store. Which side a sample is on depends only on a hash of its id, so a sample
  held out once stays held out in every later snapshot.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_registry import crud
from cloud_registry import models as m
from cloud_registry.crud import Invalid, NotFound, Refused
from cloud_registry.storage import ArtifactStore
from edgewire.device_api import SampleUpload, SampleUploadResult, SampleUploadSettings
from registry_api import retraining as rs

if TYPE_CHECKING:
    import numpy as np

DAY_S = 86400


# --------------------------------------------------------------------------- storing bytes by content


def ensure_blob(session: Session, sha256: str, size: int) -> None:
    if session.get(m.Blob, sha256) is None:
        session.add(m.Blob(sha256=sha256, size=size, created_at=time.time()))
        session.flush()


def put_file(session: Session, store: ArtifactStore, path: Path) -> str:
    """Store a file by its sha256 (once) and record it; its sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    store.put(sha256, path)
    ensure_blob(session, sha256, path.stat().st_size)
    return sha256


def put_bytes(session: Session, store: ArtifactStore, data: bytes) -> str:
    fd, name = tempfile.mkstemp(prefix="blob-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return put_file(session, store, Path(name))
    finally:
        Path(name).unlink(missing_ok=True)


def read_bytes(store: ArtifactStore, sha256: str) -> bytes:
    return b"".join(store.read(sha256))


def copy_to(store: ArtifactStore, sha256: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for chunk in store.read(sha256):
            out.write(chunk)
    return path


# --------------------------------------------------------------------------- group settings


def group_settings(session: Session, group: str | None) -> SampleUploadSettings:
    row = session.scalar(select(m.DeviceGroup).where(m.DeviceGroup.name == group)) if group else None
    return SampleUploadSettings.model_validate(row.sample_upload) if row else SampleUploadSettings()


def group_info(session: Session, group: str) -> rs.GroupSampling:
    row = session.scalar(select(m.DeviceGroup).where(m.DeviceGroup.name == group))
    return rs.GroupSampling(
        group=group,
        samples=group_settings(session, group),
        updated_at=row.updated_at if row else None,
        updated_by=row.updated_by if row else None,
    )


def set_group_settings(
    session: Session, *, group: str, settings: SampleUploadSettings, actor: str
) -> rs.GroupSampling:
    row = session.scalar(select(m.DeviceGroup).where(m.DeviceGroup.name == group))
    if row is None:
        row = m.DeviceGroup(name=group, sample_upload={}, updated_at=0.0, updated_by=actor)
        session.add(row)
    row.sample_upload = settings.model_dump(mode="json")
    row.updated_at, row.updated_by = time.time(), actor
    session.flush()
    return group_info(session, group)


# --------------------------------------------------------------------------- upload


def _npy_bytes(array: np.ndarray) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def record_samples(
    session: Session, store: ArtifactStore, *, device: m.Device, upload: SampleUpload
) -> SampleUploadResult:
    """Store what fits under the device's daily cap; repeated sample ids are no-ops."""
    settings = group_settings(session, device.group)
    if not settings.enabled:
        raise Refused(
            f"sample upload is off for this device's group ({device.group or 'no group'}); "
            "no raw input is taken unless it is switched on"
        )
    model = session.scalar(select(m.Model).where(m.Model.name == upload.model.name))
    if model is None:
        raise NotFound(f"no model named {upload.model.name!r}")
    # One device's uploads one at a time, so concurrent requests cannot both spend the last of the cap.
    session.scalar(select(m.Device.id).where(m.Device.id == device.id).with_for_update())
    now = time.time()
    used = session.scalar(
        select(func.count())
        .select_from(m.Sample)
        .where(m.Sample.device_id == device.id, m.Sample.received_at >= now - now % DAY_S)
    )
    remaining = max(0, settings.max_per_day - (used or 0))
    ids = [s.sample_id for s in upload.samples]
    known = set(session.scalars(select(m.Sample.sample_id).where(m.Sample.sample_id.in_(ids))))
    accepted = duplicates = over_cap = 0
    for sample in upload.samples:
        if sample.sample_id in known:
            duplicates += 1
            continue
        if remaining == 0:
            over_cap += 1
            continue
        known.add(sample.sample_id)
        array = sample.array()
        sha256 = put_bytes(session, store, _npy_bytes(array))
        session.add(
            m.Sample(
                sample_id=sample.sample_id,
                model_id=model.id,
                model_version=upload.model.version,
                device_id=device.id,
                device_group=device.group or "",
                received_at=now,
                captured_at=sample.captured_at,
                confidence=sample.confidence,
                predicted_class=sample.predicted_class,
                predicted_label=sample.predicted_label,
                layout=sample.layout,
                shape=list(array.shape),
                input_sha256=sha256,
            )
        )
        accepted += 1
        remaining -= 1
    session.flush()
    return SampleUploadResult(
        accepted=accepted, duplicates=duplicates, over_cap=over_cap, remaining_today=remaining
    )


# --------------------------------------------------------------------------- reading and labels


def model_labels(model: m.Model) -> list[str]:
    """The class names of the model's newest version that has a bundle."""
    for version in sorted(model.versions, key=lambda v: v.version, reverse=True):
        for artifact in version.artifacts:
            return list(artifact.bundle_manifest().postprocessing.labels)
    return []


def list_samples(
    session: Session,
    *,
    model: m.Model,
    labeled: bool | None = None,
    group: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[rs.SampleInfo]:
    query = select(m.Sample, m.Device.name).outerjoin(m.Device, m.Device.id == m.Sample.device_id)
    query = query.where(m.Sample.model_id == model.id).order_by(m.Sample.id).limit(limit).offset(offset)
    if labeled is not None:
        query = query.where(m.Sample.label.is_not(None) if labeled else m.Sample.label.is_(None))
    if group is not None:
        query = query.where(m.Sample.device_group == group)
    names = model_labels(model)
    return [
        rs.SampleInfo(
            sample_id=row.sample_id,
            device=device,
            group=row.device_group,
            model_version=row.model_version,
            received_at=row.received_at,
            captured_at=row.captured_at,
            confidence=row.confidence,
            predicted_class=row.predicted_class,
            predicted_label=row.predicted_label,
            layout=row.layout,
            shape=row.shape,
            input_sha256=row.input_sha256,
            label=row.label,
            label_name=names[row.label] if row.label is not None and row.label < len(names) else None,
            labeled_at=row.labeled_at,
            label_source=row.label_source,
        )
        for row, device in session.execute(query)
    ]


def get_sample(session: Session, *, sample_id: str) -> m.Sample:
    row = session.scalar(select(m.Sample).where(m.Sample.sample_id == sample_id))
    if row is None:
        raise NotFound(f"no sample {sample_id}")
    return row


def _class_index(label: str | int, names: list[str]) -> int | None:
    if isinstance(label, int):
        return label if not names or label < len(names) else None
    if label in names:
        return names.index(label)
    if not names and label.isdigit():
        return int(label)
    return None


def apply_labels(session: Session, *, model_name: str, body: rs.LabelUpload, actor: str) -> rs.LabelResult:
    """Label samples of a model, all or nothing: an unknown sample or class refuses the whole file."""
    model = crud.get_model(session, name=model_name)
    names = model_labels(model)
    wanted: dict[str, int] = {}
    bad_labels: list[str] = []
    for item in body.labels:
        index = _class_index(item.label, names)
        if index is None:
            bad_labels.append(str(item.label))
            continue
        if wanted.setdefault(item.sample_id, index) != index:
            raise Invalid(
                f"sample {item.sample_id} is labeled twice, differently ({wanted[item.sample_id]}, {index})"
            )
    if bad_labels:
        shown = ", ".join(repr(v) for v in sorted(set(bad_labels))[:5])
        known = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "class indices"
        raise Invalid(
            f"{len(bad_labels)} label(s) are not classes of {model_name}: {shown}; its classes: {known}"
        )
    rows = {
        row.sample_id: row
        for row in session.scalars(
            select(m.Sample).where(m.Sample.model_id == model.id, m.Sample.sample_id.in_(list(wanted)))
        )
    }
    unknown = [sid for sid in wanted if sid not in rows]
    if unknown:
        raise Invalid(
            f"{len(unknown)} sample id(s) are not samples of {model_name}: {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
        )
    now, labeled, changed, unchanged = time.time(), 0, 0, 0
    source = (body.source or actor)[:64]
    for sample_id, index in wanted.items():
        row = rows[sample_id]
        if row.label == index:
            unchanged += 1
            continue
        labeled, changed = (labeled + 1, changed) if row.label is None else (labeled, changed + 1)
        row.label, row.labeled_at, row.label_source = index, now, source
    session.flush()
    total = session.scalar(
        select(func.count())
        .select_from(m.Sample)
        .where(m.Sample.model_id == model.id, m.Sample.label.is_not(None))
    )
    return rs.LabelResult(labeled=labeled, changed=changed, unchanged=unchanged, total_labeled=total or 0)


# --------------------------------------------------------------------------- datasets


def is_held_out(sample_id: str, fraction: float) -> bool:
    """Stable: the same sample is on the same side in every snapshot."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def labeled_query(model_id: int, groups: list[str]):  # type: ignore[no-untyped-def]
    query = select(m.Sample).where(m.Sample.model_id == model_id, m.Sample.label.is_not(None))
    return query.where(m.Sample.device_group.in_(groups)) if groups else query


def _channels_first(array: np.ndarray, layout: str | None) -> np.ndarray:
    """Image inputs in NCHW, the layout PyTorch trainers take (a TFLite device sends NHWC)."""
    import numpy as np

    if layout == "NHWC" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    return array


def _write_npz(path: Path, rows: list[m.Sample], arrays: list[np.ndarray]) -> None:
    import numpy as np

    shape = arrays[0].shape[1:] if arrays else (0,)
    x = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, *shape), np.float32)
    np.savez(
        path,
        x=x,
        y=np.asarray([r.label for r in rows], dtype=np.int64),
        ids=np.asarray([r.sample_id for r in rows], dtype="U32"),
        layout=np.asarray("NCHW" if x.ndim == 4 else "none"),
    )


def create_snapshot(
    session: Session,
    store: ArtifactStore,
    *,
    model: m.Model,
    groups: list[str],
    holdout_fraction: float,
    folder: Path,
) -> m.DatasetSnapshot:
    """The next version of the model's labeled data: train.npz and holdout.npz, stored and recorded."""
    import numpy as np

    rows = list(session.scalars(labeled_query(model.id, groups).order_by(m.Sample.id)))
    if not rows:
        raise Invalid(f"{model.name} has no labeled samples" + (f" in groups {groups}" if groups else ""))
    loaded = []
    for row in rows:  # every input has its batch axis of 1 (the wire contract says so)
        array = np.load(io.BytesIO(read_bytes(store, row.input_sha256)), allow_pickle=False)
        loaded.append((row, _channels_first(array, row.layout)))
    # Inputs of another shape (a version with another input size) cannot share one array: keep the newest.
    newest_shape = loaded[-1][1].shape
    kept = [(r, a) for r, a in loaded if a.shape == newest_shape]
    train = [(r, a) for r, a in kept if not is_held_out(r.sample_id, holdout_fraction)]
    holdout = [(r, a) for r, a in kept if is_held_out(r.sample_id, holdout_fraction)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("holdout", holdout)):
        paths[name] = folder / f"{name}.npz"
        _write_npz(paths[name], [r for r, _ in part], [a for _, a in part])
    number = (
        session.scalar(
            select(func.max(m.DatasetSnapshot.number)).where(m.DatasetSnapshot.model_id == model.id)
        )
        or 0
    ) + 1
    snapshot = m.DatasetSnapshot(
        model_id=model.id,
        number=number,
        created_at=time.time(),
        groups=groups,
        holdout_fraction=holdout_fraction,
        last_sample_row=rows[-1].id,
        train_samples=len(train),
        holdout_samples=len(holdout),
        train_sha256=put_file(session, store, paths["train"]),
        holdout_sha256=put_file(session, store, paths["holdout"]),
    )
    session.add(snapshot)
    session.flush()
    return snapshot


def dataset_info(snapshot: m.DatasetSnapshot) -> rs.DatasetInfo:
    return rs.DatasetInfo(
        number=snapshot.number,
        created_at=snapshot.created_at,
        train_samples=snapshot.train_samples,
        holdout_samples=snapshot.holdout_samples,
        train_sha256=snapshot.train_sha256,
        holdout_sha256=snapshot.holdout_sha256,
        groups=snapshot.groups or [],
    )
