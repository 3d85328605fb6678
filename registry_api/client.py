"""A small typed HTTP client of the registry's admin API (httpx only), used by the CLI and the tests.

Every method returns the answer as the schema the route declares (`registry_api.schemas`,
`registry_api.retraining`), validated on arrival: a caller reads `info.state`, not `info["state"]`,
and a registry that answers with a shape this client does not know is a `RegistryError`, not a
`KeyError` three calls later. `model_dump(mode="json")` gives back the JSON the registry sent.

Errors come out as one `RegistryError` with a message and a hint, whatever went
wrong: the registry cannot be reached, refused the token, or refused the request
(its `detail` is the message).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from edgebase.errors import HintedError
from registry_api import retraining as rs
from registry_api import schemas

T = TypeVar("T")

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


@cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def _typed(kind: type[T], data: Any, what: str) -> T:
    """The answer as `kind`; a RegistryError when the registry answered something else."""
    try:
        return _adapter(kind).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise RegistryError(
            f"the registry answered {what} in a shape this edgectl does not know ({where}: {first['msg']})",
            hint="use an edgectl of the registry's version",
            status=502,  # an answer that is not what the route declares: a bad gateway, as HTTP says
        ) from None


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

    def push(self, archive: Path) -> schemas.PushResult:
        with open(archive, "rb") as handle:
            answer = self.request(
                "POST",
                "/api/v1/bundles",
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
            )
        return _typed(schemas.PushResult, answer, "the push")

    def models(self) -> list[schemas.ModelSummary]:
        return _typed(list[schemas.ModelSummary], self.request("GET", "/api/v1/models"), "the models")

    def model(self, name: str) -> schemas.ModelInfo:
        return _typed(schemas.ModelInfo, self.request("GET", f"/api/v1/models/{name}"), "the model")

    def set_alias(self, model: str, alias: str, version: int) -> schemas.AliasInfo:
        answer = self.request("PUT", f"/api/v1/models/{model}/aliases/{alias}", json={"version": version})
        return _typed(schemas.AliasInfo, answer, "the alias")

    # devices

    def devices(self, **filters: Any) -> list[schemas.DeviceInfo]:
        params = {k: v for k, v in filters.items() if v is not None}
        return _typed(
            list[schemas.DeviceInfo], self.request("GET", "/api/v1/devices", params=params), "the devices"
        )

    def device(self, name: str) -> schemas.DeviceInfo:
        answer = self.request("GET", f"/api/v1/devices/{quote(name, safe='')}")
        return _typed(schemas.DeviceInfo, answer, "the device")

    def enrollment_token(self, **body: Any) -> schemas.EnrollmentTokenCreated:
        answer = self.request("POST", "/api/v1/enrollment-tokens", json=body)
        return _typed(schemas.EnrollmentTokenCreated, answer, "the enrollment token")

    def revoke_device(self, name: str) -> schemas.DeviceInfo:
        answer = self.request("DELETE", f"/api/v1/devices/{quote(name, safe='')}")
        return _typed(schemas.DeviceInfo, answer, "the device")

    # rollouts

    def create_rollout(self, body: dict[str, Any]) -> schemas.RolloutInfo:
        return _typed(schemas.RolloutInfo, self.request("POST", "/api/v1/rollouts", json=body), "the rollout")

    def rollout(self, rollout_id: int) -> schemas.RolloutInfo:
        return _typed(
            schemas.RolloutInfo, self.request("GET", f"/api/v1/rollouts/{rollout_id}"), "the rollout"
        )

    def rollouts(self, state: str | None = None) -> list[schemas.RolloutInfo]:
        answer = self.request("GET", "/api/v1/rollouts", params={"state": state} if state else None)
        return _typed(list[schemas.RolloutInfo], answer, "the rollouts")

    def rollout_action(self, rollout_id: int, action: str, reason: str | None = None) -> schemas.RolloutInfo:
        answer = self.request("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json={"reason": reason})
        return _typed(schemas.RolloutInfo, answer, "the rollout")

    # tokens and broker files

    def create_token(self, name: str, role: str) -> schemas.TokenCreated:
        answer = self.request("POST", "/api/v1/tokens", json={"name": name, "role": role})
        return _typed(schemas.TokenCreated, answer, "the token")

    def tokens(self) -> list[schemas.TokenInfo]:
        return _typed(list[schemas.TokenInfo], self.request("GET", "/api/v1/tokens"), "the tokens")

    def revoke_token(self, name: str) -> schemas.TokenInfo:
        answer = self.request("DELETE", f"/api/v1/tokens/{quote(name, safe='')}")
        return _typed(schemas.TokenInfo, answer, "the token")

    def broker_file(self, name: str) -> str:
        return self.request("GET", f"/api/v1/broker/{name}")

    # the retraining loop

    def sampling(self, group: str) -> rs.GroupSampling:
        return _typed(
            rs.GroupSampling, self.request("GET", f"/api/v1/groups/{group}/sampling"), "the sampling"
        )

    def set_sampling(self, group: str, settings: dict[str, Any]) -> rs.GroupSampling:
        answer = self.request("PUT", f"/api/v1/groups/{group}/sampling", json=settings)
        return _typed(rs.GroupSampling, answer, "the sampling")

    def samples(self, model: str, **filters: Any) -> list[rs.SampleInfo]:
        params = {k: v for k, v in filters.items() if v is not None}
        answer = self.request("GET", f"/api/v1/models/{model}/samples", params=params)
        return _typed(list[rs.SampleInfo], answer, "the samples")

    def sample_input(self, sample_id: str) -> bytes:
        return self.request("GET", f"/api/v1/samples/{sample_id}/input", raw=True)

    def upload_labels(self, model: str, labels: list[dict[str, Any]], source: str | None) -> rs.LabelResult:
        answer = self.request(
            "POST", f"/api/v1/models/{model}/labels", json={"labels": labels, "source": source}
        )
        return _typed(rs.LabelResult, answer, "the labels")

    def upload_source(self, model: str, version: int, path: Path) -> rs.SourceStored:
        with open(path, "rb") as handle:
            answer = self.request(
                "PUT",
                f"/api/v1/models/{model}/versions/{version}/source",
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
            )
        return _typed(rs.SourceStored, answer, "the source")

    def policy(self, model: str) -> rs.PolicyInfo:
        return _typed(
            rs.PolicyInfo, self.request("GET", f"/api/v1/models/{model}/retraining-policy"), "the policy"
        )

    def set_policy(self, model: str, policy: dict[str, Any]) -> rs.PolicyInfo:
        answer = self.request("PUT", f"/api/v1/models/{model}/retraining-policy", json=policy)
        return _typed(rs.PolicyInfo, answer, "the policy")

    def delete_policy(self, model: str) -> None:
        self.request("DELETE", f"/api/v1/models/{model}/retraining-policy")

    def retrain(self, model: str, parent_version: int | None, reason: str | None) -> rs.JobInfo:
        body = {"parent_version": parent_version, "reason": reason}
        return _typed(
            rs.JobInfo, self.request("POST", f"/api/v1/models/{model}/retrain", json=body), "the job"
        )

    def jobs(self, model: str | None = None, state: str | None = None) -> list[rs.JobInfo]:
        params = {k: v for k, v in (("model", model), ("state", state)) if v}
        return _typed(list[rs.JobInfo], self.request("GET", "/api/v1/jobs", params=params), "the jobs")

    def job(self, job_id: int) -> rs.JobInfo:
        return _typed(rs.JobInfo, self.request("GET", f"/api/v1/jobs/{job_id}"), "the job")

    def job_log(self, job_id: int) -> str:
        return self.request("GET", f"/api/v1/jobs/{job_id}/log") or ""

    def cancel_job(self, job_id: int) -> rs.JobInfo:
        return _typed(rs.JobInfo, self.request("POST", f"/api/v1/jobs/{job_id}/cancel"), "the job")

    def drift(self, model: str, **filters: Any) -> list[rs.DriftPoint]:
        params = {k: v for k, v in filters.items() if v is not None}
        answer = self.request("GET", f"/api/v1/models/{model}/drift", params=params)
        return _typed(list[rs.DriftPoint], answer, "the drift points")
