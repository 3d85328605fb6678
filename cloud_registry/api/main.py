"""All admin API routers, mounted under /api/v1."""

from fastapi import APIRouter

from cloud_registry.api.routes import (
    broker,
    devices,
    drift,
    jobs,
    models,
    policies,
    rollouts,
    samples,
    tokens,
    webhooks,
)

api_router = APIRouter()
api_router.include_router(models.router)
api_router.include_router(devices.router)
api_router.include_router(rollouts.router)
api_router.include_router(tokens.router)
api_router.include_router(broker.router)
api_router.include_router(samples.router)
api_router.include_router(policies.router)
api_router.include_router(jobs.router)
api_router.include_router(drift.router)
api_router.include_router(webhooks.router)
