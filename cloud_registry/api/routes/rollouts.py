"""Rollouts: create, read, pause, resume, abort, roll back. Every action is recorded with its reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from cloud_registry import models as m
from cloud_registry import rollout_info, rollouts
from cloud_registry.api.deps import Deployer, ReadOnly, RegistryDep, SessionDep
from registry_api import schemas

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
RolloutId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


@router.post("", status_code=201, summary="Start a rollout of a version (or alias) in waves")
def create_rollout(
    body: schemas.RolloutCreate, session: SessionDep, registry: RegistryDep, principal: Deployer
) -> schemas.RolloutInfo:
    rollout, publications = rollouts.create_rollout(
        session, body=body, actor=principal.name, public_url=registry.settings.public_url
    )
    session.commit()
    registry.publish(publications)
    return rollout_info.rollout_info(session, rollout)


@router.get("", summary="List rollouts, newest first")
def list_rollouts(
    session: SessionDep,
    principal: ReadOnly,
    state: Annotated[schemas.RolloutState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[schemas.RolloutInfo]:
    from sqlalchemy import select

    query = select(m.Rollout).order_by(m.Rollout.id.desc()).limit(limit)
    if state:
        query = query.where(m.Rollout.state == state)
    return [rollout_info.rollout_info(session, r, decisions=20) for r in session.scalars(query)]


@router.get("/{rollout_id}", summary="A rollout: waves, devices per state, gate values, decisions")
def get_rollout(rollout_id: RolloutId, session: SessionDep, principal: ReadOnly) -> schemas.RolloutInfo:
    return rollout_info.rollout_info(session, rollouts.get_rollout(session, rollout_id=rollout_id))


def _add_state_action(action: str, summary: str) -> None:
    engine_action = getattr(rollouts, action)

    def endpoint(
        rollout_id: RolloutId,
        session: SessionDep,
        principal: Deployer,
        body: schemas.RolloutAction | None = None,
    ) -> schemas.RolloutInfo:
        rollout = engine_action(
            session, rollout_id=rollout_id, actor=principal.name, reason=body.reason if body else None
        )
        session.commit()
        return rollout_info.rollout_info(session, rollout)

    router.post(f"/{{rollout_id}}/{action}", summary=summary, name=action)(endpoint)


for _action, _summary in (
    ("pause", "Pause: no wave starts until resumed"),
    ("resume", "Resume a paused rollout"),
    ("abort", "Abort: no further waves; updated devices keep the new version"),
):
    _add_state_action(_action, _summary)


@router.post(
    "/{rollout_id}/rollback", summary="Stop and order every updated device back to its previous version"
)
def rollback(
    rollout_id: RolloutId,
    session: SessionDep,
    registry: RegistryDep,
    principal: Deployer,
    body: schemas.RolloutAction | None = None,
) -> schemas.RolloutInfo:
    rollout, publications = rollouts.rollback(
        session,
        rollout_id=rollout_id,
        actor=principal.name,
        reason=body.reason if body else None,
        command_key=registry.command_key,
        public_url=registry.settings.public_url,
    )
    session.commit()
    registry.publish(publications)
    return rollout_info.rollout_info(session, rollout)
