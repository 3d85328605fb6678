"""Webhook deliveries: what the registry has sent, is retrying, or gave up on (read-only)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query

from cloud_registry import schemas, webhooks
from cloud_registry.api.deps import ReadOnly, SessionDep

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("/deliveries", summary="Webhook deliveries, newest first (filter: state)")
def list_deliveries(
    session: SessionDep,
    principal: ReadOnly,
    state: schemas.WebhookState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[schemas.WebhookDeliveryInfo]:
    return [
        schemas.WebhookDeliveryInfo(
            id=row.id,
            event_id=row.event_id,
            event=row.event,
            host=urlsplit(row.url).hostname or "",
            state=row.state,  # type: ignore[arg-type]
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            text=str(row.body.get("text", "")),
        )
        for row in webhooks.deliveries(session, state=state, limit=limit)
    ]
