"""Fleet drift: per model version and device group, the devices' drift summaries pooled and compared with
the bundle's `drift_reference` (the FP32 model on the validation data at build time).

Every `drift_interval_s` the registry pools the summaries of the last `drift_window_s` of telemetry
(`edgewire.drift.merge`) and stores one `DriftScore` per (version, group):

- `psi_confidence`, `psi_class`: population stability index of the confidence and class histograms
  against the reference (0: the same; above 0.25 a large shift, by the usual rule of thumb);
- `mean_shift_z`: the largest per-channel two-sample z statistic of the input means
  (`edgewire.drift.mean_shift_z`: Welch's, with per-pixel stds, a conservative scale);
- `score`: the input drift, psi_confidence: the one number a policy's drift trigger watches by default.
  The prediction-mix drift, psi_class, is reported apart and triggers only when a policy asks
  (`DriftTrigger.prediction_mix`): a camera that mostly sees one class, or one that sees the classes in
  order, skews the mix of predicted classes (PSI up to 6.9 measured on ordinary digits) while its inputs
  are as familiar to the model as ever (confidence PSI under 0.15).

A window pooling fewer than `MIN_WINDOW_SAMPLES` inferences is not scored: PSI of a handful of inferences
is noise (one inference scored 8.28). Rows are keyed by the tick (`bucket`), so several replicas scoring
the same tick store it once.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from edgebundle.manifest import DriftSummary
from edgewire.drift import mean_shift_z, merge, psi
from registry_api import retraining as rs

NO_GROUP = ""  # devices outside any group pool together under this name
MIN_WINDOW_SAMPLES = 50  # a (version, group) window pooling fewer inferences is not scored


def reference_of(version: m.ModelVersion) -> DriftSummary | None:
    """The version's build-time reference: every target's is the same FP32 model on the same data."""
    for artifact in version.artifacts:
        reference = (artifact.manifest or {}).get("drift_reference")
        if reference:
            return DriftSummary.model_validate(reference)
    return None


def compare(reference: DriftSummary, current: DriftSummary) -> dict[str, float]:
    values = {
        "psi_confidence": psi(reference.confidence_hist, current.confidence_hist),
        "psi_class": psi(reference.class_hist, current.class_hist),
        "mean_shift_z": mean_shift_z(reference, current),
    }
    values["score"] = values["psi_confidence"]  # input drift; the prediction mix is psi_class, apart
    return values


def trigger_value(row: m.DriftScore, trigger: rs.DriftTrigger) -> float:
    """What a drift trigger compares with its threshold: its metric, and the prediction mix if it opted in."""
    value = float(getattr(row, trigger.metric))
    return max(value, row.psi_class) if trigger.prediction_mix else value


def score_fleet(session: Session, *, window_s: float, interval_s: float, now: float | None = None) -> int:
    """Score every (model, version, group) with drift in the window; the number of rows written."""
    from cloud_registry.reports import inserted_key_tuples

    now = time.time() if now is None else now
    rows = session.execute(
        select(
            m.TelemetryRecord.model_name,
            m.TelemetryRecord.model_version,
            m.TelemetryRecord.device_id,
            m.Device.group,
            m.TelemetryRecord.drift,
        )
        .join(m.Device, m.Device.id == m.TelemetryRecord.device_id)
        .where(
            m.TelemetryRecord.received_at > now - window_s,
            m.TelemetryRecord.received_at <= now,
            m.TelemetryRecord.model_version.is_not(None),
            m.TelemetryRecord.drift.is_not(None),
        )
    )
    pooled: dict[tuple[str, int, str], tuple[list[DriftSummary], set[int]]] = {}
    for model_name, version, device_id, group, drift in rows:
        if not drift or not drift.get("samples"):
            continue
        summaries, devices = pooled.setdefault((model_name, version, group or NO_GROUP), ([], set()))
        summaries.append(DriftSummary.model_validate(drift))
        devices.add(device_id)
    bucket = int(now // interval_s)
    records: list[dict[str, Any]] = []
    references: dict[tuple[str, int], tuple[int, DriftSummary | None]] = {}
    for (model_name, version, group), (summaries, devices) in sorted(pooled.items()):
        if (model_name, version) not in references:
            row = session.scalar(
                select(m.ModelVersion)
                .join(m.Model)
                .where(m.Model.name == model_name, m.ModelVersion.version == version)
            )
            references[(model_name, version)] = (row.model_id, reference_of(row)) if row else (0, None)
        model_id, reference = references[(model_name, version)]
        if reference is None:  # an unknown version, or one built without validation data
            continue
        current = merge(summaries)
        if current.samples < MIN_WINDOW_SAMPLES:
            continue
        records.append(
            {
                "model_id": model_id,
                "model_version": version,
                "device_group": group,
                "bucket": bucket,
                "at": now,
                "window_s": window_s,
                "devices": len(devices),
                "samples": current.samples,
                **compare(reference, current),
                "summary": current.model_dump(mode="json"),
            }
        )
    key = ["model_id", "model_version", "device_group", "bucket"]
    inserted = set(inserted_key_tuples(session, m.DriftScore, records, key))
    # A score another replica wrote first for this tick is that replica's to announce: this one tells the
    # webhooks about the scores it wrote itself, all of them or some (two replicas that raced on a tick).
    _announce_crossings(session, [r for r in records if tuple(r[k] for k in key) in inserted], bucket)
    return len(inserted)


def _announce_crossings(session: Session, records: list[dict[str, Any]], bucket: int) -> None:
    """A webhook event for each (version, group) whose score just went above its policy's drift threshold
    (the score before was at or below it, or there was none): one event per crossing, not per tick."""
    from cloud_registry import webhooks
    from cloud_registry.retraining import get_policy

    policies: dict[int, rs.RetrainingPolicy | None] = {}
    for record in records:
        model_id = record["model_id"]
        if model_id not in policies:
            row = get_policy(session, model_id=model_id)
            policies[model_id] = rs.RetrainingPolicy.model_validate(row.policy) if row else None
        policy = policies[model_id]
        trigger = policy.triggers.drift if policy is not None else None
        if trigger is None or (policy.groups and record["device_group"] not in policy.groups):
            continue
        current = m.DriftScore(**{k: v for k, v in record.items() if k != "summary"})
        if trigger_value(current, trigger) <= trigger.threshold:
            continue
        previous = session.scalar(
            select(m.DriftScore)
            .where(
                m.DriftScore.model_id == model_id,
                m.DriftScore.model_version == record["model_version"],
                m.DriftScore.device_group == record["device_group"],
                m.DriftScore.bucket < bucket,
            )
            .order_by(m.DriftScore.bucket.desc())
            .limit(1)
        )
        if previous is not None and trigger_value(previous, trigger) > trigger.threshold:
            continue  # still above: announced when it crossed
        name = session.scalar(select(m.Model.name).where(m.Model.id == model_id))
        value = trigger_value(current, trigger)
        group = record["device_group"]
        webhooks.enqueue(
            session,
            event="drift.above_policy",
            text=f"Drift of {name} v{record['model_version']} in group '{group}' is {value:.3g}, "
            f"above its policy's {trigger.threshold:g} ({trigger.metric})",
            data={
                "model": name,
                "version": record["model_version"],
                "group": group,
                "metric": trigger.metric,
                "value": value,
                "threshold": trigger.threshold,
                "devices": record["devices"],
                "samples": record["samples"],
            },
        )


def history(
    session: Session,
    *,
    model_id: int,
    version: int | None = None,
    group: str | None = None,
    since: float | None = None,
    limit: int = 2000,
) -> list[m.DriftScore]:
    """Scores oldest first (the newest `limit` of them)."""
    query = select(m.DriftScore).where(m.DriftScore.model_id == model_id)
    if version is not None:
        query = query.where(m.DriftScore.model_version == version)
    if group is not None:
        query = query.where(m.DriftScore.device_group == group)
    if since is not None:
        query = query.where(m.DriftScore.at >= since)
    rows = session.scalars(query.order_by(m.DriftScore.at.desc(), m.DriftScore.id.desc()).limit(limit))
    return list(reversed(list(rows)))


def point(row: m.DriftScore) -> rs.DriftPoint:
    return rs.DriftPoint(
        model_version=row.model_version,
        group=row.device_group,
        at=row.at,
        window_s=row.window_s,
        devices=row.devices,
        samples=row.samples,
        psi_confidence=row.psi_confidence,
        psi_class=row.psi_class,
        mean_shift_z=row.mean_shift_z,
        score=row.score,
    )


def above_since(
    rows: list[m.DriftScore], trigger: rs.DriftTrigger, *, now: float, interval_s: float
) -> m.DriftScore | None:
    """The first score of the current unbroken run above the threshold (oldest-first `rows` of one series).

    A score with too few samples, one at or below the threshold, or a gap of more than two ticks
    (no telemetry) ends a run; None when the newest score is not above the threshold.
    """
    first = None
    previous_at = None
    for row in rows:
        value = trigger_value(row, trigger)
        gap = previous_at is not None and row.at - previous_at > 2 * interval_s
        if row.samples < trigger.min_samples or value <= trigger.threshold or gap:
            first = None
        if row.samples >= trigger.min_samples and value > trigger.threshold and first is None:
            first = row
        previous_at = row.at
    if first is None or previous_at is None or now - previous_at > 2 * interval_s:
        return None
    return first
