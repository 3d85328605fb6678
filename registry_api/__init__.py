"""The registry's admin API as a contract: its request and response schemas, and a client of it.

Beside `edgewire` (what devices say) this is what people and their tools say to the registry. The
server (`cloud_registry`) and the command line (`edgectl`) both import it; it imports neither, and
nothing heavy: pydantic for the schemas, httpx for the client (imported by `registry_api.client`).

- `registry_api.schemas`: models, devices, rollouts, tokens, webhooks.
- `registry_api.retraining`: retraining policies, samples, labels, jobs, drift.
- `registry_api.client`: `RegistryClient`, whose errors are one `RegistryError` with a hint.
"""
