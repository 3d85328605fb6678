"""The FastAPI application: `create_app(settings)`; `edgectl registry serve` runs it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cloud_registry.api.main import api_router
from cloud_registry.api.routes import device_api, metrics, ui
from cloud_registry.core.config import Settings
from cloud_registry.crud import Conflict, Invalid, NotFound, Refused
from cloud_registry.service import Registry
from edgebundle.errors import BundleError

DESCRIPTION = """
The edgectl registry: signed model bundles, the device fleet, staged rollouts gated on telemetry.

Admin calls (`/api/v1/...`) carry `Authorization: Bearer <API token>`; roles are read-only, deployer
and admin. Device calls (`/v1/...`, the edgewire contract) carry the device's own token.
"""


# Domain errors and the status they answer with; the message is the body's detail.
ERROR_STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    Conflict: 409,
    Refused: 403,
    Invalid: 422,
    BundleError: 422,
}


def _answer_with(status_code: int):  # type: ignore[no-untyped-def]
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_code)

    return handler


def create_app(settings: Settings | None = None, *, registry: Registry | None = None) -> FastAPI:
    registry = registry or Registry(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        try:
            yield
        finally:
            registry.stop()

    app = FastAPI(
        title="edgectl registry",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.include_router(api_router, prefix="/api/v1")
    app.include_router(device_api.router)
    app.include_router(metrics.router)
    app.include_router(ui.router, prefix="/ui", include_in_schema=False)

    for error, status_code in ERROR_STATUS.items():
        app.add_exception_handler(error, _answer_with(status_code))

    @app.get("/healthz", tags=["health"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
