"""Devices that join a running rollout: enrolled into its group, moved into it or tagged after it began.

They go into its next wave (a wave of their own appended while the last one runs), as hawkBit's dynamic
groups do, unless another active rollout already owns them; the reconciler adds them each tick.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from cloud_registry.rollouts import decide
from registry_api import schemas


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
