"""Webhook deliveries: what the registry has sent, is retrying, or gave up on; a failed one sent again."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from cloud_registry import webhooks
from cloud_registry.api.deps import Deployer, ReadOnly, RegistryDep, SessionDep
from registry_api import schemas

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("/deliveries", summary="Webhook deliveries, newest first (filter: state)")
def list_deliveries(
    session: SessionDep,
    principal: ReadOnly,
    state: schemas.WebhookState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[schemas.WebhookDeliveryInfo]:
    return [_info(row) for row in webhooks.deliveries(session, state=state, limit=limit)]


@router.post("/deliveries/{delivery_id}/retry", summary="Send a delivery that gave up again (deployer)")
def retry_delivery(
    delivery_id: Annotated[int, PathParam(ge=1, le=schemas.INT32_MAX)],
    session: SessionDep,
    registry: RegistryDep,
    principal: Deployer,
) -> schemas.WebhookDeliveryInfo:
    row = webhooks.retry(session, delivery_id=delivery_id)
    session.commit()
    if registry.webhooks is not None:
        registry.webhooks.wake()
    return _info(row)


def _info(row) -> schemas.WebhookDeliveryInfo:  # type: ignore[no-untyped-def]
    return schemas.WebhookDeliveryInfo(
        id=row.id,
        event_id=row.event_id,
        event=row.event,
        host=urlsplit(row.url).hostname or "",
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        text=str(row.body.get("text", "")),
    )
