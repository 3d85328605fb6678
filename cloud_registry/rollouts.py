"""Staged rollouts: a version to a selection of devices in waves, gated on the devices' telemetry.

This module is the engine's primitives (create, start a wave, add joiners, revert, finish, the
operator's actions) and the reading of a rollout; the gate values are `rollout_evidence`, and the
loop that drives running rollouts is `reconciler`.

All state lives in the database (rollouts, their waves and devices, decisions,
gate evaluations); `Reconciler.tick` reads it, decides, and writes back, so a
registry restarted mid-rollout carries on from the rows, and with several
replicas on PostgreSQL each rollout is advanced by one of them at a time
(`SELECT ... FOR UPDATE SKIP LOCKED`); one tick is drawn in `reconciler`.
Every decision is a `RolloutDecision` row with its reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, object_session

from cloud_registry import crud
from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.crud import Conflict, NotFound, Publication
from cloud_registry.rollout_evidence import FAILED_STATES
from edgewire.commands import sign_rollback
from edgewire.update_states import FAILED_UPDATE_STATES
from registry_api import schemas

log = logging.getLogger("cloud_registry.rollouts")


def _update_id(rollout_id: int, device_id: int, version: int, kind: str = "u") -> str:
    return f"r{rollout_id}-{kind}{version}-d{device_id}"


def decide(
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
    devices = device_records.list_devices(
        session, target=selection.target, group=selection.group, tag=selection.tag
    )
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
    decide(
        session,
        rollout,
        "created",
        f"{body.model} v{version.version} to {len(chosen)} devices in {len(kept)} waves "
        f"({', '.join(f'{p:g}%: {s}' for p, s in kept)})",
        actor,
        excluded={k: v for k, v in excluded.items() if v},
        dropped_empty_waves=[p for p, s in zip(percents, sizes, strict=True) if s == 0],
    )
    publications = start_wave(session, rollout, 0, actor, public_url)
    return rollout, publications


def start_wave(
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
    decide(
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


def add_joiners(session: Session, rollout: m.Rollout, actor: str) -> None:
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
    decide(
        session,
        rollout,
        "devices_joined",
        f"{len(devices)} device(s) joined the selection during the rollout: they go in wave {index + 1}",
        actor,
        devices=[d.name for d in devices],
        wave_index=index,
    )


# --------------------------------------------------------------------------- reverting


def revert(
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


def move(rollout: m.Rollout, action: str, refusal: str | None = None) -> str:
    """The state `action` takes the rollout to, by `schemas.ROLLOUT_TRANSITIONS`; Conflict where it has none."""
    to = schemas.ROLLOUT_TRANSITIONS.get((rollout.state, action))
    if to is None:
        allowed = " or ".join(schemas.rollout_sources(action))
        raise Conflict(
            refusal or f"rollout {rollout.id} is {rollout.state}; only a {allowed} rollout can {action}"
        )
    return to


def finish(rollout: m.Rollout, state: str, reason: str) -> None:
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
    to = move(
        rollout, action, f"rollout {rollout_id} is {rollout.state}; only a {allowed} rollout can be {done}"
    )
    rollout.state, rollout.updated_at = to, time.time()
    decide(session, rollout, done, reason or f"{done} by operator", actor)
    return rollout


def pause(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    return _switch(session, rollout_id, actor, reason, action="pause", done="paused")


def resume(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    return _switch(session, rollout_id, actor, reason, action="resume", done="resumed")


def abort(session: Session, *, rollout_id: int, actor: str, reason: str | None) -> m.Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id, lock=True)
    to = move(rollout, "abort", f"rollout {rollout_id} is {rollout.state} already")
    text = reason or "aborted by operator: no further waves; updated devices keep the new version"
    finish(rollout, to, text)
    decide(session, rollout, "aborted", text, actor)
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
    to = move(
        rollout, "rollback", f"rollout {rollout_id} is {rollout.state}; its devices were ordered back already"
    )
    text = reason or "manual rollback by operator"
    publications = revert(session, rollout, text, command_key, public_url)
    finish(rollout, to, text)
    decide(session, rollout, "rolled_back", text, actor, devices=len(publications))
    return rollout, publications


# ----------------------------------------------------------- reading


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
