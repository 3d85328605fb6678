"""A rollout as the API and the dashboard show it: its waves, devices per state, gate values, decisions,
and how each device's update to its version ended."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from cloud_registry.rollout_evidence import FAILED_STATES
from cloud_registry.rollouts import update_id_prefix
from edgewire.update_states import FAILED_UPDATE_STATES
from registry_api import schemas


def update_outcomes(session: Session, rollout: m.Rollout) -> dict[int, str]:
    """How each device's update to the rollout's version ended ("succeeded" or "failed"), by device id.

    Read from the devices' update statuses, so a revert afterwards (a halted wave) does not hide it.
    """
    prefix = update_id_prefix(rollout.id, rollout.version.version)
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
