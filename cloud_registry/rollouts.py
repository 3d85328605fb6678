"""Staged rollouts: a version to a selection of devices in waves, gated on the devices' telemetry.

All state lives in the database (rollouts, their waves and devices, decisions,
gate evaluations); `Reconciler.tick` reads it, decides, and writes back, so a
registry restarted mid-rollout carries on from the rows, and with several
replicas on PostgreSQL each rollout is advanced by one of them at a time
(`SELECT ... FOR UPDATE SKIP LOCKED`).

One tick of a running rollout:
0. devices that joined its selection since it was created (enrolled into its
   group, moved into it, tagged) and are in no other active rollout join its
   next wave (a wave appended for them while the last one runs), as hawkBit's
   dynamic groups do;
1. gate values over every device of the started waves (see `gates`);
2. a gate above its threshold: halt, and order every updated device back to its
   previous version with a signed `RollbackOrder`;
3. else, the current wave: once the share of its devices that SUCCEEDED meets
   the success threshold (and, if the policy asks, enough inferences came in),
   it must stay healthy for `bake_s`; then the next wave starts, or the rollout
   completes. A wave that does not meet its threshold within `wave_timeout_s`
   halts the rollout the same way.
Every decision is a `RolloutDecision` row with its reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, object_session, sessionmaker

from cloud_registry import crud, gates
from cloud_registry import models as m
from cloud_registry.crud import Conflict, NotFound, Publication
from edgewire.commands import sign_rollback
from edgewire.update_states import FAILED_UPDATE_STATES
from registry_api import schemas

log = logging.getLogger("cloud_registry.rollouts")

FAILED_STATES = ("failed", "rolled_back")
TOUCHED_STATES = ("updating", "succeeded", "failed", "rolled_back", "reverting", "reverted", "revert_failed")


def _update_id(rollout_id: int, device_id: int, version: int, kind: str = "u") -> str:
    return f"r{rollout_id}-{kind}{version}-d{device_id}"


def _decide(
    session: Session, rollout: m.Rollout, action: str, reason: str, actor: str, **details: Any
) -> m.RolloutDecision:
    row = m.RolloutDecision(
        rollout_id=rollout.id,
        at=time.time(),
        wave=rollout.current_wave,
        action=action,
        reason=reason,
        actor=actor,
        details=details,
    )
    session.add(row)
    log.info("rollout %s: %s: %s", rollout.id, action, reason)
    return row


# --------------------------------------------------------------------------- creation


def _select_devices(session: Session, selection: schemas.Selection) -> list[m.Device]:
    devices = crud.list_devices(session, target=selection.target, group=selection.group, tag=selection.tag)
    if selection.devices is not None:
        wanted = set(selection.devices)
        devices = [d for d in devices if d.name in wanted]
    return devices


def create_rollout(
    session: Session, *, body: schemas.RolloutCreate, actor: str, public_url: str
) -> tuple[m.Rollout, list[Publication]]:
    """Plan the waves, record the rollout, and start its first wave."""
    if body.alias is not None:
        version = crud.resolve_alias(session, model=body.model, alias=body.alias)
    else:
        version = crud.get_version(session, model=body.model, version=body.version or 0)
    targets = {a.target for a in version.artifacts}
    excluded: dict[str, list[str]] = {"no artifact for target": [], "already on it or newer": []}
    chosen = []
    for device in _select_devices(session, body.selection):
        if device.target not in targets:
            excluded["no artifact for target"].append(device.name)
        elif device.model_name == body.model and (device.current_version or 0) >= version.version:
            excluded["already on it or newer"].append(device.name)
        else:
            chosen.append(device)
    if not chosen:
        raise Conflict(
            f"no device to update: the selection matches none that takes {body.model} v{version.version} "
            f"(artifacts for {sorted(targets) or 'no target'})"
        )
    busy = session.scalars(
        select(m.Device.name)
        .join(m.RolloutDevice, m.RolloutDevice.device_id == m.Device.id)
        .join(m.Rollout, m.Rollout.id == m.RolloutDevice.rollout_id)
        .where(m.Rollout.state.in_(schemas.ACTIVE_ROLLOUT_STATES), m.Device.id.in_([d.id for d in chosen]))
    ).all()
    if busy:
        raise Conflict(f"devices already in an active rollout: {', '.join(sorted(busy)[:10])}")
    now = time.time()
    percents = body.wave_percents()
    sizes = schemas.wave_sizes(percents, len(chosen))
    kept = [(p, s) for p, s in zip(percents, sizes, strict=True) if s > 0]
    rollout = m.Rollout(
        version_id=version.id,
        state=schemas.RolloutState.RUNNING.value,
        selection=body.selection.model_dump(mode="json", exclude_none=True),
        waves=[p for p, _ in kept],
        policy=body.policy.model_dump(mode="json"),
        current_wave=-1,
        created_at=now,
        created_by=actor,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    # A stable shuffle per rollout, so the first wave is not always the same devices.
    order = sorted(chosen, key=lambda d: hashlib.sha256(f"{rollout.id}:{d.name}".encode()).hexdigest())
    start = 0
    for index, (percent, size) in enumerate(kept):
        session.add(m.RolloutWave(rollout_id=rollout.id, index=index, percent=percent, size=size))
        for device in order[start : start + size]:
            previous = device.current_version if device.model_name == body.model else None
            session.add(
                m.RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=index, from_version=previous)
            )
        start += size
    session.flush()
    session.refresh(rollout)
    _decide(
        session,
        rollout,
        "created",
        f"{body.model} v{version.version} to {len(chosen)} devices in {len(kept)} waves "
        f"({', '.join(f'{p:g}%: {s}' for p, s in kept)})",
        actor,
        excluded={k: v for k, v in excluded.items() if v},
        dropped_empty_waves=[p for p, s in zip(percents, sizes, strict=True) if s == 0],
    )
    publications = _start_wave(session, rollout, 0, actor, public_url)
    return rollout, publications


def _start_wave(
    session: Session, rollout: m.Rollout, index: int, actor: str, public_url: str
) -> list[Publication]:
    wave = rollout.wave_rows[index]
    now = time.time()
    wave.state, wave.started_at = "running", now
    rollout.current_wave, rollout.updated_at = index, now
    version = rollout.version
    model_name = version.model.name
    publications = []
    # The wave's devices in one query (loading each through `entry.device` took 5,000 round trips,
    # and as many flushes, for the last wave of a 10,000-device rollout).
    devices = {
        d.id: d
        for d in session.scalars(
            select(m.Device)
            .join(m.RolloutDevice, m.RolloutDevice.device_id == m.Device.id)
            .where(m.RolloutDevice.rollout_id == rollout.id, m.RolloutDevice.wave == index)
        )
    }
    entries = [entry for entry in rollout.devices if entry.wave == index]
    for entry in entries:
        device = devices[entry.device_id]
        artifact = crud.artifact_for(version, device.target)
        if artifact is None:  # the artifact cannot vanish (versions are immutable), but be explicit
            entry.state, entry.reason = "failed", f"no artifact for target {device.target}"
            continue
        entry.update_id = _update_id(rollout.id, entry.device_id, version.version)
        entry.state, entry.started_at = "updating", now
        publications.append(
            crud.set_desired(
                session,
                device=device,
                model=model_name,
                artifact=artifact,
                version=version.version,
                update_id=entry.update_id,
                public_url=public_url,
                rollout_id=rollout.id,
            )
        )
    _decide(
        session,
        rollout,
        "wave_started",
        f"wave {index + 1} of {len(rollout.wave_rows)} ({wave.percent:g}%): {wave.size} devices",
        actor,
        devices=[devices[e.device_id].name for e in entries],
    )
    return publications


# --------------------------------------------------------------------------- devices that join


def _joiners(session: Session, rollout: m.Rollout) -> list[m.Device]:
    """Devices that match the rollout's selection now and are in no active rollout: enrolled into its group
    (or given its tag, moved into its group) since it was created, and able to take its version."""
    selection = schemas.Selection.model_validate(rollout.selection)
    version = rollout.version
    targets = sorted({a.target for a in version.artifacts})
    # Uncorrelated, so the database evaluates it once (a hash, not a lookup per device).
    busy = (
        select(m.RolloutDevice.device_id)
        .join(m.Rollout, m.Rollout.id == m.RolloutDevice.rollout_id)
        .where(m.Rollout.state.in_(schemas.ACTIVE_ROLLOUT_STATES))
    )
    query = select(m.Device).where(
        m.Device.revoked_at.is_(None),
        m.Device.target.in_(targets),
        or_(
            m.Device.model_name.is_(None),
            m.Device.model_name != version.model.name,
            m.Device.current_version.is_(None),
            m.Device.current_version < version.version,
        ),
        m.Device.id.not_in(busy),
    )
    if selection.target:
        query = query.where(m.Device.target == selection.target)
    if selection.group:
        query = query.where(m.Device.group == selection.group)
    devices = list(session.scalars(query.order_by(m.Device.name)))
    if selection.tag:
        devices = [d for d in devices if selection.tag in (d.tags or [])]
    if selection.devices is not None:
        wanted = set(selection.devices)
        devices = [d for d in devices if d.name in wanted]
    return devices


def _add_joiners(session: Session, rollout: m.Rollout, actor: str) -> None:
    """Put the devices that joined the selection into the rollout's next wave, as hawkBit's dynamic groups do.

    The next wave is the one after the current; while the last wave runs, a new wave (100 %) is appended for
    them, so a late device never changes the running wave's success share or its timeout."""
    devices = _joiners(session, rollout)
    if not devices:
        return
    model_name = rollout.version.model.name
    index = rollout.current_wave + 1
    if index < len(rollout.wave_rows):
        wave = rollout.wave_rows[index]
        wave.size += len(devices)
    else:
        wave = m.RolloutWave(rollout_id=rollout.id, index=index, percent=100.0, size=len(devices))
        rollout.wave_rows.append(wave)
        rollout.waves = [*rollout.waves, 100.0]
    for device in devices:
        previous = device.current_version if device.model_name == model_name else None
        rollout.devices.append(
            m.RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=index, from_version=previous)
        )
    session.flush()
    _decide(
        session,
        rollout,
        "devices_joined",
        f"{len(devices)} device(s) joined the selection during the rollout: they go in wave {index + 1}",
        actor,
        devices=[d.name for d in devices],
        wave_index=index,
    )


# --------------------------------------------------------------------------- gate values


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


# --------------------------------------------------------------------------- reverting


def _revert(
    session: Session, rollout: m.Rollout, reason: str, command_key: Ed25519PrivateKey, public_url: str
) -> list[Publication]:
    """Order every device of the started waves back to its previous version; pending devices stay untouched."""
    model = rollout.version.model
    publications = []
    for entry in rollout.devices:
        if entry.wave > rollout.current_wave or entry.state == "pending":
            continue
        device = entry.device
        # A device whose update failed keeps that state (it is what the failure rate counted); it is still
        # ordered back, so that its desired state is the version it runs.
        keep_state = entry.state in FAILED_STATES
        previous = None
        if entry.from_version is not None:
            previous_version = next((v for v in model.versions if v.version == entry.from_version), None)
            previous = crud.artifact_for(previous_version, device.target) if previous_version else None
        if previous is None:
            # Nothing to go back to: stop asking for the new version and leave the device as it is.
            device.desired = None
            publications.append(Publication(device.fleet, device.name, None))
            if not keep_state:
                entry.state, entry.reason = "reverted", "no previous version to return to; desired cleared"
            continue
        order = sign_rollback(
            command_key, device=device.name, model=model.name, version=entry.from_version, reason=reason
        )
        update_id = _update_id(rollout.id, entry.device_id, entry.from_version, kind="b")
        if not keep_state:
            entry.update_id, entry.state, entry.reason = update_id, "reverting", reason
        publications.append(
            crud.set_desired(
                session,
                device=device,
                model=model.name,
                artifact=previous,
                version=entry.from_version,
                update_id=update_id,
                public_url=public_url,
                rollout_id=rollout.id,
                rollback=order,
            )
        )
    return publications


FINISH_EVENTS = {
    "halted": "rollout.halted",
    "completed": "rollout.completed",
    "rolled_back": "rollout.rolled_back",
}


def _move(rollout: m.Rollout, action: str, refusal: str | None = None) -> str:
    """The state `action` takes the rollout to, by `schemas.ROLLOUT_TRANSITIONS`; Conflict where it has none."""
    to = schemas.ROLLOUT_TRANSITIONS.get((rollout.state, action))
    if to is None:
        allowed = " or ".join(schemas.rollout_sources(action))
        raise Conflict(
            refusal or f"rollout {rollout.id} is {rollout.state}; only a {allowed} rollout can {action}"
        )
    return to


def _finish(rollout: m.Rollout, state: str, reason: str) -> None:
    now = time.time()
    rollout.state, rollout.reason, rollout.finished_at, rollout.updated_at = state, reason, now, now
    for wave in rollout.wave_rows:
        if wave.state == "running":
            wave.state = "halted" if state in ("halted", "rolled_back") else state
    event = FINISH_EVENTS.get(state)
    session = object_session(rollout)
    if event is not None and session is not None:
        from cloud_registry import webhooks

        version = rollout.version
        webhooks.enqueue(
            session,
            event=event,
            text=f"Rollout {rollout.id} of {version.model.name} v{version.version} {state.replace('_', ' ')}: {reason}",
            data={
                "rollout": rollout.id,
                "model": version.model.name,
                "version": version.version,
                "state": state,
                "reason": reason,
                "wave": rollout.current_wave,
            },
        )


# --------------------------------------------------------------------------- operator actions


def get_rollout(session: Session, *, rollout_id: int, lock: bool = False) -> m.Rollout:
    query = select(m.Rollout).where(m.Rollout.id == rollout_id)
    if lock:
        query = query.with_for_update()
    rollout = session.scalar(query)
    if rollout is None:
        raise NotFound(f"no rollout {rollout_id}")
    return rollout


def _switch(
    session: Session, rollout_id: int, actor: str, reason: str | None, *, action: str, done: str
) -> m.Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id, lock=True)
    allowed = " or ".join(schemas.rollout_sources(action))
    to = _move(
        rollout, action, f"rollout {rollout_id} is {rollout.state}; only a {allowed} rollout can be {done}"
    )
    rollout.state, rollout.updated_at = to, time.time()
    _decide(session, rollout, done, reason or f"{done} by operator", actor)
    return rollout


def pause(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    return _switch(session, rollout_id, actor, reason, action="pause", done="paused")


def resume(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    return _switch(session, rollout_id, actor, reason, action="resume", done="resumed")


def abort(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id, lock=True)
    to = _move(rollout, "abort", f"rollout {rollout_id} is {rollout.state} already")
    text = reason or "aborted by operator: no further waves; updated devices keep the new version"
    _finish(rollout, to, text)
    _decide(session, rollout, "aborted", text, actor)
    return rollout


def rollback(
    session: Session,
    *,
    rollout_id: int,
    actor: str,
    reason: str | None,
    command_key: Ed25519PrivateKey,
    public_url: str,
) -> tuple[m.Rollout, list[Publication]]:
    rollout = get_rollout(session, rollout_id=rollout_id, lock=True)
    to = _move(
        rollout, "rollback", f"rollout {rollout_id} is {rollout.state}; its devices were ordered back already"
    )
    text = reason or "manual rollback by operator"
    publications = _revert(session, rollout, text, command_key, public_url)
    _finish(rollout, to, text)
    _decide(session, rollout, "rolled_back", text, actor, devices=len(publications))
    return rollout, publications


# --------------------------------------------------------------------------- the reconciler


class Reconciler:
    """Advances every running rollout; `tick` is one pass, `run` loops until stopped."""

    actor = "reconciler"

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        command_key: Ed25519PrivateKey,
        public_url: str,
        publish: Callable[[list[Publication]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory, self.command_key, self.public_url = factory, command_key, public_url
        self.publish, self.clock = publish, clock

    def tick(self) -> None:
        with self.factory() as session:
            ids = list(
                session.scalars(
                    select(m.Rollout.id).where(m.Rollout.state == "running").order_by(m.Rollout.id)
                )
            )
        for rollout_id in ids:
            try:
                self._step_one(rollout_id)
            except Exception:  # one broken rollout must not stop the others
                log.exception("rollout %s: reconcile failed", rollout_id)

    def _step_one(self, rollout_id: int) -> None:
        publications: list[Publication] = []
        with self.factory() as session, session.begin():
            rollout = session.scalar(
                select(m.Rollout)
                .where(m.Rollout.id == rollout_id, m.Rollout.state == "running")
                .with_for_update(skip_locked=True)
            )
            if rollout is None:  # finished meanwhile, or another replica holds it
                return
            publications = self.step(session, rollout)
        if publications:
            self.publish(publications)

    def step(self, session: Session, rollout: m.Rollout) -> list[Publication]:
        now = self.clock()
        policy = schemas.GatePolicy.model_validate(rollout.policy)
        _add_joiners(session, rollout, self.actor)
        values = evaluate(session, rollout)
        crossed = gates.crossed_gates(values, policy)
        if crossed:
            self._record_values(session, rollout, {**values, "waiting": None}, crossed, now)
            thresholds = {
                "failure_rate": policy.max_failure_rate,
                "error_rate_increase": policy.max_error_rate_increase,
                "p95_regression": policy.max_p95_regression,
                "confidence_psi": policy.max_confidence_psi,
            }
            reason = "; ".join(f"{g} {values[g]:.4g} > {thresholds[g]:g}" for g in crossed)
            publications = _revert(
                session, rollout, f"health gate crossed: {reason}", self.command_key, self.public_url
            )
            _finish(rollout, _move(rollout, "halt"), f"health gate crossed: {reason}")
            _decide(
                session,
                rollout,
                "halted",
                f"health gate crossed in wave {rollout.current_wave + 1}: {reason}",
                self.actor,
                values=values,
                rolled_back=len(publications),
            )
            return publications
        wave = rollout.wave_rows[rollout.current_wave]
        entries = [e for e in rollout.devices if e.wave == wave.index]
        succeeded = sum(e.state == "succeeded" for e in entries)
        share = succeeded / len(entries) if entries else 1.0
        short = waiting_for_evidence(values, policy, rollout.version.version)
        if short is None and policy.min_inferences and values["inferences_after"] < policy.min_inferences:
            short = f"{values['inferences_after']} of {policy.min_inferences} inferences after the update"
        enough_data = short is None
        threshold_met = gates.meets(share, policy.success_threshold)
        if not threshold_met:
            waiting = (
                f"wave {wave.index + 1}: {succeeded}/{len(entries)} devices succeeded, "
                f"{policy.success_threshold:.0%} needed"
            )
        elif not enough_data:
            waiting = f"wave {wave.index + 1}: gates wait for evidence: {short}"
        else:  # constant while it bakes, so the evaluations kept do not change every tick
            waiting = f"wave {wave.index + 1}: baking, healthy for {policy.bake_s:g} s before the next step"
        if threshold_met and enough_data:
            if wave.healthy_since is None:
                wave.healthy_since = now
                _decide(
                    session,
                    rollout,
                    "wave_threshold_met",
                    f"wave {wave.index + 1}: {succeeded}/{len(entries)} succeeded ({share:.0%} >= {policy.success_threshold:.0%}); "
                    f"watching it for {policy.bake_s:g} s",
                    self.actor,
                    values=values,
                )
            if now - wave.healthy_since >= policy.bake_s:
                wave.state, wave.completed_at = "completed", now
                if wave.index + 1 >= len(rollout.wave_rows):
                    _finish(
                        rollout,
                        _move(rollout, "complete"),
                        "every wave met its success threshold with gates below their limits",
                    )
                    _decide(
                        session,
                        rollout,
                        "completed",
                        f"all {len(rollout.wave_rows)} waves completed",
                        self.actor,
                        values=values,
                    )
                    self._record_values(session, rollout, {**values, "waiting": None}, crossed, now)
                    return []
                _decide(
                    session,
                    rollout,
                    "wave_completed",
                    f"wave {wave.index + 1} healthy for {policy.bake_s:g} s",
                    self.actor,
                    values=values,
                )
                publications = _start_wave(session, rollout, wave.index + 1, self.actor, self.public_url)
                following = rollout.wave_rows[wave.index + 1]
                waiting = (
                    f"wave {following.index + 1}: 0/{following.size} devices succeeded, "
                    f"{policy.success_threshold:.0%} needed"
                )
                self._record_values(session, rollout, {**values, "waiting": waiting}, crossed, now)
                return publications
        self._record_values(session, rollout, {**values, "waiting": waiting}, crossed, now)
        if threshold_met and enough_data:
            return []
        if wave.healthy_since is not None:  # it was met, and no longer is (a late failure)
            wave.healthy_since = None
            _decide(
                session,
                rollout,
                "wave_threshold_lost",
                f"wave {wave.index + 1}: {succeeded}/{len(entries)} succeeded",
                self.actor,
            )
        if wave.started_at is not None and now - wave.started_at > policy.wave_timeout_s:
            if threshold_met:
                reason = (
                    f"wave {wave.index + 1} did not give its gates enough evidence in "
                    f"{policy.wave_timeout_s:g} s ({short})"
                )
            else:
                reason = (
                    f"wave {wave.index + 1} did not meet its success threshold in {policy.wave_timeout_s:g} s "
                    f"({succeeded}/{len(entries)} succeeded)"
                )
            publications = _revert(session, rollout, reason, self.command_key, self.public_url)
            _finish(rollout, _move(rollout, "halt"), reason)
            _decide(
                session, rollout, "halted", reason, self.actor, values=values, rolled_back=len(publications)
            )
            return publications
        return []

    def _record_values(
        self, session: Session, rollout: m.Rollout, values: dict[str, Any], crossed: list[str], now: float
    ) -> None:
        """Keep one evaluation per tick while they change, at least one a minute when they do not."""
        last = session.scalar(
            select(m.GateEvaluation)
            .where(m.GateEvaluation.rollout_id == rollout.id)
            .order_by(m.GateEvaluation.id.desc())
            .limit(1)
        )
        if (
            last is not None
            and last.values == values
            and last.wave == rollout.current_wave
            and now - last.at < 60
            and not crossed
        ):
            return
        session.add(
            m.GateEvaluation(
                rollout_id=rollout.id, at=now, wave=rollout.current_wave, values=values, crossed=crossed
            )
        )


# --------------------------------------------------------------------------- reading


def update_outcomes(session: Session, rollout: m.Rollout) -> dict[int, str]:
    """How each device's update to the rollout's version ended ("succeeded" or "failed"), by device id.

    Read from the devices' update statuses, so a revert afterwards (a halted wave) does not hide it.
    """
    prefix = f"r{rollout.id}-u{rollout.version.version}-d"
    outcomes: dict[int, str] = {}
    rows = session.execute(
        select(m.UpdateEvent.device_id, m.UpdateEvent.state)
        .where(m.UpdateEvent.rollout_id == rollout.id, m.UpdateEvent.update_id.startswith(prefix))
        .order_by(m.UpdateEvent.id)
    )
    for device_id, state in rows:
        if device_id in outcomes:
            continue  # the first final state is the outcome, as for the rollout entry
        if state == "SUCCEEDED":
            outcomes[device_id] = "succeeded"
        elif state in FAILED_UPDATE_STATES:
            outcomes[device_id] = "failed"
    for entry in rollout.devices:  # failures without a status (no artifact for its target), and successes
        if entry.device_id not in outcomes:
            if entry.state in FAILED_STATES:
                outcomes[entry.device_id] = "failed"
            elif entry.state == "succeeded":
                outcomes[entry.device_id] = "succeeded"
    return outcomes


def rollout_info(session: Session, rollout: m.Rollout, decisions: int = 200) -> schemas.RolloutInfo:
    counts: dict[str, int] = {}
    for entry in rollout.devices:
        counts[entry.state] = counts.get(entry.state, 0) + 1
    last = session.scalar(
        select(m.GateEvaluation)
        .where(m.GateEvaluation.rollout_id == rollout.id)
        .order_by(m.GateEvaluation.id.desc())
        .limit(1)
    )
    rows = session.scalars(
        select(m.RolloutDecision)
        .where(m.RolloutDecision.rollout_id == rollout.id)
        .order_by(m.RolloutDecision.id)
        .limit(decisions)
    )
    outcomes = update_outcomes(session, rollout)
    waves = []
    for wave in rollout.wave_rows:
        entries = [outcomes.get(e.device_id) for e in rollout.devices if e.wave == wave.index]
        waves.append(
            schemas.WaveInfo(
                index=wave.index,
                percent=wave.percent,
                size=wave.size,
                state=wave.state,
                started_at=wave.started_at,
                healthy_since=wave.healthy_since,
                completed_at=wave.completed_at,
                succeeded=entries.count("succeeded"),
                failed=entries.count("failed"),
            )
        )
    return schemas.RolloutInfo(
        id=rollout.id,
        model=rollout.version.model.name,
        version=rollout.version.version,
        state=rollout.state,  # type: ignore[arg-type]
        reason=rollout.reason,
        selection=rollout.selection,
        policy=schemas.GatePolicy.model_validate(rollout.policy),
        current_wave=rollout.current_wave,
        created_at=rollout.created_at,
        created_by=rollout.created_by,
        finished_at=rollout.finished_at,
        devices=counts,
        touched=sum(e.state != "pending" for e in rollout.devices),
        total=len(rollout.devices),
        waves=waves,
        gates=last.values if last else None,
        waiting=(last.values or {}).get("waiting") if last and rollout.state == "running" else None,
        decisions=[schemas.DecisionInfo.model_validate(d, from_attributes=True) for d in rows],
    )
