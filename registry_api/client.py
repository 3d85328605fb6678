"""A small HTTP client of the registry's admin API (httpx only), used by the CLI and the tests.

Errors come out as one `RegistryError` with a message and a hint, whatever went
wrong: the registry cannot be reached, refused the token, or refused the request
(its `detail` is the message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edgebase.errors import HintedError

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV, TOKEN_ENV = "EDGECTL_REGISTRY_URL", "EDGECTL_REGISTRY_TOKEN"


class RegistryError(HintedError):
    """The registry refused a request or could not be reached; `status` is the HTTP status, None when unreached."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


_HINTS = {
    401: f"pass a valid API token with --token or {TOKEN_ENV}",
    403: "ask an admin for a token with the needed role (read-only, deployer, admin)",
    404: "check the name or id (list them with the matching list command)",
    409: "the request contradicts the registry's records; see the message",
    413: "the registry's upload limit is EDGECTL_REGISTRY_MAX_UPLOAD_BYTES",
    422: "see the message for the field or file that is wrong",
}


class RegistryClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 60.0, transport: Any = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON (or text; the bytes with `raw`); RegistryError for anything but success."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"cannot reach the registry at {self.url}: {type(exc).__name__}",
                hint=f"check --registry / {URL_ENV}, and that `edgectl registry serve` runs there",
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            if isinstance(detail, list):  # FastAPI validation errors
                first = detail[0] if detail else {}
                where = ".".join(str(p) for p in first.get("loc", [])[1:]) or "request"
                detail = f"invalid {where}: {first.get('msg', 'invalid')}"
            message = str(detail or response.reason_phrase or "request failed")
            if response.status_code >= 500:
                raise RegistryError(
                    f"the registry failed ({response.status_code}): {message}",
                    hint="see the registry's log",
                    status=response.status_code,
                )
            raise RegistryError(message, hint=_HINTS.get(response.status_code), status=response.status_code)
        if raw:
            return response.content
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    # models and bundles

    def push(self, archive: Path) -> dict[str, Any]:
        with open(archive, "rb") as handle:
            return self.request(
                "POST",
                "/api/v1/bundles",
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
            )

    def models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/models")

    def model(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/models/{name}")

    def set_alias(self, model: str, alias: str, version: int) -> dict[str, Any]:
        return self.request("PUT", f"/api/v1/models/{model}/aliases/{alias}", json={"version": version})

    # devices

    def devices(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/api/v1/devices", params=params)

    def device(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/devices/{quote(name, safe='')}")

    def enrollment_token(self, **body: Any) -> dict[str, Any]:
        return self.request("POST", "/api/v1/enrollment-tokens", json=body)

    def revoke_device(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/devices/{quote(name, safe='')}")

    # rollouts

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/v1/rollouts", json=body)

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/rollouts/{rollout_id}")

    def rollouts(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/rollouts", params={"state": state} if state else None)

    def rollout_action(self, rollout_id: int, action: str, reason: str | None = None) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json={"reason": reason})

    # tokens and broker files

    def create_token(self, name: str, role: str) -> dict[str, Any]:
        return self.request("POST", "/api/v1/tokens", json={"name": name, "role": role})

    def tokens(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/tokens")

    def revoke_token(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/tokens/{quote(name, safe='')}")

    def broker_file(self, name: str) -> str:
        return self.request("GET", f"/api/v1/broker/{name}")

    # the retraining loop

    def sampling(self, group: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/groups/{group}/sampling")

    def set_sampling(self, group: str, settings: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/api/v1/groups/{group}/sampling", json=settings)

    def samples(self, model: str, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", f"/api/v1/models/{model}/samples", params=params)

    def sample_input(self, sample_id: str) -> bytes:
        return self.request("GET", f"/api/v1/samples/{sample_id}/input", raw=True)

    def upload_labels(self, model: str, labels: list[dict[str, Any]], source: str | None) -> dict[str, Any]:
        return self.request(
            "POST", f"/api/v1/models/{model}/labels", json={"labels": labels, "source": source}
        )

    def upload_source(self, model: str, version: int, path: Path) -> dict[str, Any]:
        with open(path, "rb") as handle:
            return self.request(
                "PUT",
                f"/api/v1/models/{model}/versions/{version}/source",
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
            )

    def policy(self, model: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/models/{model}/retraining-policy")

    def set_policy(self, model: str, policy: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/api/v1/models/{model}/retraining-policy", json=policy)

    def delete_policy(self, model: str) -> None:
        self.request("DELETE", f"/api/v1/models/{model}/retraining-policy")

    def retrain(self, model: str, parent_version: int | None, reason: str | None) -> dict[str, Any]:
        body = {"parent_version": parent_version, "reason": reason}
        return self.request("POST", f"/api/v1/models/{model}/retrain", json=body)

    def jobs(self, model: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("model", model), ("state", state)) if v}
        return self.request("GET", "/api/v1/jobs", params=params)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/jobs/{job_id}")

    def job_log(self, job_id: int) -> str:
        return self.request("GET", f"/api/v1/jobs/{job_id}/log") or ""

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/jobs/{job_id}/cancel")

    def drift(self, model: str, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", f"/api/v1/models/{model}/drift", params=params)
