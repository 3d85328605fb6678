"""The cloud registry: models, versions and their signed bundles, the fleet, staged rollouts, a dashboard.

Importing this package imports nothing heavy: the FastAPI app lives in
`cloud_registry.main`, its schemas and HTTP client are the contract package `registry_api`.
docs/registry.md describes the service.
"""
