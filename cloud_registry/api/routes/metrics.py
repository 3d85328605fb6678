"""`GET /metrics`: the registry's Prometheus metrics (cloud_registry.metrics), for a read-only token.

Prometheus sends the token as `Authorization: Bearer` (`authorization.credentials_file` in the scrape
config, deploy/prometheus/prometheus.yml): the fleet's shape is not public.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from cloud_registry import metrics
from cloud_registry.api.deps import ReadOnly, RegistryDep

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of the fleet, rollouts, ingest, drift and retraining (read-only token)",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}}},
)
def prometheus_metrics(registry: RegistryDep, principal: ReadOnly) -> Response:
    return Response(metrics.exposition(registry), media_type=metrics.CONTENT_TYPE)
