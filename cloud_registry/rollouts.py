"""Staged rollouts: a version to a selection of devices in waves, gated on the devices' telemetry.

This module is the engine's primitives (create, start a wave, revert, finish, the operator's
actions); devices that join a running rollout are `rollout_joiners`, the gate values
`rollout_evidence`, the rollout as the API shows it `rollout_info`, and the loop that drives
running rollouts `reconciler`.

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
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from cloud_registry import crud
from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.crud import Conflict, NotFound, Publication
from cloud_registry.rollout_evidence import FAILED_STATES
from edgewire.commands import sign_rollback
from registry_api import schemas

log = logging.getLogger("cloud_registry.rollouts")


def update_id_prefix(rollout_id: int, version: int, kind: str = "u") -> str:
    """What every update id a rollout gives for `version` starts with (`kind`: "u" an update, "b" a
    rollback to it); the device id follows."""
    return f"r{rollout_id}-{kind}{version}-d"


def update_id(rollout_id: int, device_id: int, version: int, kind: str = "u") -> str:
    return f"{update_id_prefix(rollout_id, version, kind)}{device_id}"


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
        entry.update_id = update_id(rollout.id, entry.device_id, version.version)
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
        rollback_id = update_id(rollout.id, entry.device_id, entry.from_version, kind="b")
        if not keep_state:
            entry.update_id, entry.state, entry.reason = rollback_id, "reverting", reason
        publications.append(
            crud.set_desired(
                session,
                device=device,
                model=model.name,
                artifact=previous,
                version=entry.from_version,
                update_id=rollback_id,
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
