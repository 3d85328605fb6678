"""The registry's device API over HTTP (httpx), as `edgewire.device_api` defines it.

The device token goes only to the registry's own origin: a download URL on
another host (a CDN, a presigned object-store link) gets no Authorization
header, and redirects to another origin drop it too (httpx does that). The
token is never logged: only method, path and status are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import SecretStr, ValidationError

from device_agent.errors import AgentError
from edgewire import (
    DesiredModel,
    DesiredResponse,
    DeviceConfig,
    EnrollRequest,
    EnrollResponse,
    Paths,
    SampleUpload,
    SampleUploadResult,
)

log = logging.getLogger(__name__)
JSON = {"Content-Type": "application/json"}


class RegistryError(Exception):
    """The registry could not be reached or answered something unexpected."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class RegistryClient:
    def __init__(
        self, base_url: str, token: SecretStr | None, timeout_s: float, ca_file: Path | None = None
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._token = token
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            verify=str(ca_file) if ca_file else True,
            follow_redirects=False,
            headers={"User-Agent": "edgectl-agent"},
        )

    def close(self) -> None:
        self._client.close()

    def resolve(self, url: str) -> tuple[str, dict[str, str]]:
        """(absolute URL, headers): a path is taken on the registry; the token goes to its origin only."""
        absolute = urljoin(self.base_url + "/", url) if url.startswith("/") else url
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise RegistryError(f"refusing a download URL that is not http(s): {url[:100]!r}")
        same_origin = _origin(absolute) == _origin(self.base_url)
        headers = (
            {"Authorization": f"Bearer {self._token.get_secret_value()}"}
            if self._token and same_origin
            else {}
        )
        return absolute, headers

    def _request(self, method: str, path: str, *, content: bytes | None = None):
        import httpx

        url, headers = self.resolve(path)
        if content is not None:
            headers = {**headers, **JSON}
        try:
            response = self._client.request(method, url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        log.debug("%s %s -> %d", method, path, response.status_code)
        return response

    def desired(self) -> DesiredModel | None:
        response = self._request("GET", Paths.desired)
        if response.status_code != 200:
            raise RegistryError(f"GET {Paths.desired} answered {response.status_code}")
        try:
            return DesiredResponse.model_validate_json(response.content).desired
        except ValidationError as exc:
            raise RegistryError(f"GET {Paths.desired}: unexpected body: {str(exc).splitlines()[0]}") from None

    def device_config(self) -> DeviceConfig:
        """The registry's settings for this device; defaults (sample upload off) from a registry without them."""
        response = self._request("GET", Paths.config)
        if response.status_code == 404:
            return DeviceConfig()
        if response.status_code != 200:
            raise RegistryError(f"GET {Paths.config} answered {response.status_code}")
        try:
            return DeviceConfig.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryError(f"GET {Paths.config}: unexpected body: {str(exc).splitlines()[0]}") from None

    def post_samples(self, upload: SampleUpload) -> tuple[int, SampleUploadResult | None]:
        """(status, the registry's answer when it took the upload); (0, None) when it cannot be reached."""
        try:
            response = self._request("POST", Paths.samples, content=upload.model_dump_json().encode())
        except RegistryError as exc:
            log.warning("sample upload: %s", exc)
            return 0, None
        if response.status_code != 200:
            log.warning("POST %s answered %d", Paths.samples, response.status_code)
            return response.status_code, None
        try:
            return 200, SampleUploadResult.model_validate_json(response.content)
        except ValidationError:
            return 502, None

    def post(self, path: str, payload: bytes) -> bool:
        """POST a queued payload (update status, telemetry); True when the registry took it."""
        response = self._request("POST", path, content=payload)
        if response.status_code >= 300:
            log.warning("POST %s answered %d", path, response.status_code)
        return 200 <= response.status_code < 300

    def stream(self, url: str, headers: dict[str, str]):
        """A streaming GET (the caller's `with` closes it); redirects are followed, the token is not carried off."""
        absolute, auth = self.resolve(url)
        request = self._client.build_request("GET", absolute, headers={**auth, **headers})
        return _Streamed(self._client, request)


class _Streamed:
    def __init__(self, client, request) -> None:
        self._client, self._request, self._response = client, request, None

    def __enter__(self):
        self._response = self._client.send(self._request, stream=True, follow_redirects=True)
        return self._response

    def __exit__(self, *exc_info) -> None:
        if self._response is not None:
            self._response.close()


def enroll(base_url: str, request: EnrollRequest, timeout_s: float, ca_file: Path | None) -> EnrollResponse:
    """Exchange a one-time enrollment token for the device's credential."""
    import httpx

    try:
        response = httpx.post(
            f"{base_url.rstrip('/')}{Paths.enroll}",
            content=request.model_dump_json().encode(),
            headers=JSON,
            timeout=timeout_s,
            verify=str(ca_file) if ca_file else True,
        )
    except httpx.HTTPError as exc:
        raise AgentError(
            f"cannot reach the registry at {base_url}: {type(exc).__name__}",
            hint="check registry.url in the config and the network",
        ) from None
    if response.status_code in (401, 403):
        raise AgentError(
            f"the registry refused the enrollment token ({response.status_code})",
            hint="ask for a new one-time token; each works once",
        )
    if response.status_code >= 300:
        raise AgentError(
            f"the registry answered {response.status_code} to the enrollment",
            hint=f"the registry said: {response.text[:200]}",
        )
    try:
        return EnrollResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise AgentError(
            f"the registry's enrollment answer does not fit the contract: {str(exc).splitlines()[0]}",
            hint="the registry and the agent may be of different versions",
        ) from None
