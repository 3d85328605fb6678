"""The cloud registry: models, versions and their signed bundles, the fleet, staged rollouts, a dashboard.

Importing this package imports nothing heavy: the FastAPI app lives in
`cloud_registry.main`, the HTTP client (httpx only) in `cloud_registry.client`.
docs/registry.md describes the service.
"""
