"""What a rollout's gates judge on: each updated device's telemetry before and after its update, pooled.

Before: the device's previous version in the baseline window before it was told to update. After: the
new version since it reported SUCCEEDED. Raw telemetry and, past its retention, the hourly aggregates
(`cloud_registry.retention`) are read in two joined queries per table for every device at once; the
pool follows the policy's minimum-evidence rules (`gates.pool`). The reconciler (`rollouts`) and the
retraining loop's canary checks (`jobs.canary`) judge on the same evidence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_registry import gates
from cloud_registry import models as m
from registry_api import schemas

# A rollout device's states (`RolloutDevice.state`) that count as updated, and as failed among those.
FAILED_STATES = ("failed", "rolled_back")
TOUCHED_STATES = ("updating", "succeeded", "failed", "rolled_back", "reverting", "reverted", "revert_failed")


def _device_windows(
    session: Session, rollout: m.Rollout, entries: list[m.RolloutDevice], policy: schemas.GatePolicy
) -> list[tuple[gates.Window, gates.Window]]:
    """(before, after) per updated device: its telemetry on its previous version before it was told to
    update, and on the new version since it reported SUCCEEDED (empty when it has not)."""
    to_version = rollout.version.version
    model_name = rollout.version.model.name
    starts = [e.started_at for e in entries if e.started_at is not None]
    # Aggregates of the hours these windows overlap exist only once raw telemetry that old was rolled up
    # (a rollout older than the retention): one query says whether to look for them at all.
    hourly = bool(starts) and (
        session.scalar(
            select(m.TelemetryHourly.id)
            .where(m.TelemetryHourly.hour > min(starts) - policy.baseline_window_s - 3600)
            .limit(1)
        )
        is not None
    )
    session.flush()  # the entries' states and times as this step left them, for the joins below
    ids = {e.id for e in entries if e.started_at is not None}
    before_rows, after_rows = _window_rows(session, rollout, model_name, to_version, policy.baseline_window_s)
    per_entry = {i: (gates.Window(), gates.Window()) for i in ids}
    for rows, side in ((before_rows, 0), (after_rows, 1)):
        for entry_id, count, errors, p95, drift, interval_s in rows:
            if entry_id in per_entry:
                drift = drift or {}
                per_entry[entry_id][side].add(
                    count, errors, p95, drift.get("confidence_hist"), interval_s, drift.get("class_hist")
                )
    if hourly:
        before_hours, after_hours = _hourly_rows(
            session, rollout, model_name, to_version, policy.baseline_window_s
        )
        for rows, side in ((before_hours, 0), (after_hours, 1)):
            for entry_id, row in rows:
                if entry_id in per_entry:
                    per_entry[entry_id][side].merge(_hourly_window(row))
    return [per_entry[e.id] for e in entries if e.started_at is not None]


def _window_rows(
    session: Session, rollout: m.Rollout, model_name: str, to_version: int, baseline_window_s: float
):
    """Every telemetry row of the rollout's devices that falls in a gate window, each row with its rollout
    entry's id (see `_gate_rows`)."""
    t = m.TelemetryRecord

    def within(start, stop=None):  # a report counts in the window it was received in
        return (t.received_at >= start, *(() if stop is None else (t.received_at < stop,)))

    columns = (t.count, t.errors, t.latency_ms_p95, t.drift, t.interval_s)
    return _gate_rows(session, rollout, t, columns, within, model_name, to_version, baseline_window_s)


def _hourly_rows(
    session: Session, rollout: m.Rollout, model_name: str, to_version: int, baseline_window_s: float
):
    """Telemetry past its retention (cloud_registry.retention), to the hour, for the same two windows, each
    aggregate with its rollout entry's id. Raw rows and aggregates never cover the same message."""
    h = m.TelemetryHourly

    def within(start, stop=None):  # an hourly aggregate counts in a window its hour overlaps
        return (h.hour > start - 3600, *(() if stop is None else (h.hour < stop,)))

    return _gate_rows(session, rollout, h, (h,), within, model_name, to_version, baseline_window_s)


def _gate_rows(
    session: Session, rollout: m.Rollout, table, columns, within, model_name, to_version, baseline_window_s
):
    """(before, after) rows of `table` (raw telemetry or its hourly aggregates) for the rollout's started
    devices, in two joined queries: before, the device's previous version in the baseline window before
    it was told to update; after, the new version since it reported SUCCEEDED. `within(start, stop)`
    says which of the table's rows fall in a window. One query per device and window made a
    10,000-device rollout's reconciler spend seconds on each tick."""
    rd = m.RolloutDevice
    joined = (
        select(rd.id, *columns)
        .join(rd, rd.device_id == table.device_id)
        .where(rd.rollout_id == rollout.id, rd.started_at.is_not(None), table.model_name == model_name)
    )
    before = session.execute(
        joined.where(
            rd.from_version.is_not(None),
            table.model_version == rd.from_version,
            *within(rd.started_at - baseline_window_s, rd.started_at),
        )
    ).all()
    after = session.execute(
        joined.where(
            rd.state == "succeeded",
            rd.finished_at.is_not(None),
            table.model_version == to_version,
            *within(rd.finished_at),
        )
    ).all()
    return before, after


def _hourly_window(row: m.TelemetryHourly) -> gates.Window:
    return gates.Window(
        inferences=row.inferences,
        errors=row.errors,
        p95_weighted=row.p95_weighted,
        p95_count=row.p95_count,
        confidence=list(row.confidence_hist or []),
        seconds=row.seconds,
    )


def pooled_windows(
    session: Session, rollout: m.Rollout, entries: list[m.RolloutDevice]
) -> tuple[list[tuple[gates.Window, gates.Window]], gates.Window, gates.Window, gates.Evidence]:
    """These devices' (before, after) windows, and their pool under the rollout's minimum-evidence rules:
    what the gates judge on (and the retraining loop's canary checks, on the same evidence)."""
    policy = schemas.GatePolicy.model_validate(rollout.policy)
    windows = _device_windows(session, rollout, entries, policy)
    before, after, evidence = gates.pool(
        windows,
        min_device_inferences=policy.min_device_inferences,
        min_baked_s=policy.min_baked_s,
        min_devices=policy.min_devices,
    )
    return windows, before, after, evidence


def evaluate(session: Session, rollout: m.Rollout) -> dict[str, Any]:
    """Gate values over the devices of the started waves, with the figures and the evidence they come from."""
    policy = schemas.GatePolicy.model_validate(rollout.policy)
    started = [e for e in rollout.devices if e.wave <= rollout.current_wave]
    updated = [e for e in started if e.state in TOUCHED_STATES]
    failed = [e for e in updated if e.state in FAILED_STATES]
    windows, before, after, evidence = pooled_windows(
        session, rollout, [e for e in updated if e.state not in FAILED_STATES]
    )
    telemetry = gates.telemetry_values(before, after, policy.min_inferences)
    if not evidence.enough:
        telemetry = dict.fromkeys(telemetry)
    values: dict[str, Any] = {
        "failure_rate": len(failed) / len(updated) if updated else None,
        **telemetry,
    }
    return {
        **values,
        "updated": len(updated),
        "failed": len(failed),
        "baseline_devices": evidence.baseline_devices,
        "judged_devices": evidence.judged_devices,
        "needed_devices": evidence.needed_devices,
        "inferences_before": sum(b.inferences for b, _ in windows),  # every updated device's, judged or not
        "inferences_after": sum(a.inferences for _, a in windows),
        "judged_inferences_before": before.inferences,  # the judged devices' alone
        "judged_inferences_after": after.inferences,
        "error_rate_before": before.error_rate,
        "error_rate_after": after.error_rate,
        "p95_ms_before": before.p95_ms,
        "p95_ms_after": after.p95_ms,
    }


def waiting_for_evidence(values: dict[str, Any], policy: schemas.GatePolicy, version: int) -> str | None:
    """Why the telemetry gates cannot judge yet, when they can judge at all; None when they can."""
    baseline, judged, needed = values["baseline_devices"], values["judged_devices"], values["needed_devices"]
    if baseline == 0:
        return None  # no device served its previous version enough to compare with: nothing to wait for
    rule = f"{policy.min_device_inferences} inferences over {policy.min_baked_s:g} s"
    if judged < needed:
        return f"{judged} of {needed} devices reported {rule} on v{version}"
    pooled_before, pooled_after = values["judged_inferences_before"], values["judged_inferences_after"]
    if pooled_after < policy.min_inferences:  # the baseline will not grow: only the new version is waited for
        return (
            f"the judged devices' {pooled_after} of {policy.min_inferences} inferences on v{version} "
            f"({pooled_before} before)"
        )
    return None
