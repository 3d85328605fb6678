"""`edgectl push`, and what every fleet command shares: the registry URL and token, and its errors.

The registry URL and API token come from --registry / --token or the
EDGECTL_REGISTRY_URL / EDGECTL_REGISTRY_TOKEN environment variables. httpx and
the client are imported inside the commands, so `edgectl --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from toolchain.errors import EdgectlError

if TYPE_CHECKING:
    from registry_api.client import RegistryClient

RegistryUrl = Annotated[
    str,
    typer.Option(
        "--registry", envvar="EDGECTL_REGISTRY_URL", help="Registry base URL (EDGECTL_REGISTRY_URL)."
    ),
]
RegistryToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="EDGECTL_REGISTRY_TOKEN",
        help="API token (EDGECTL_REGISTRY_TOKEN).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_URL = "http://127.0.0.1:8080"


class RegistryRequestError(EdgectlError):
    """The registry refused the request (bad token, unknown name, conflict)."""


class RegistryUnavailableError(EdgectlError):
    """The registry cannot be reached or failed."""

    exit_code = 5


@contextmanager
def registry_client(url: str, token: str | None) -> Iterator[RegistryClient]:
    """A client for the command's duration; its errors become one `error:` line and a `hint:` line."""
    from registry_api.client import RegistryClient, RegistryError

    if not token:
        raise RegistryRequestError(
            "no registry API token given",
            hint="pass --token or set EDGECTL_REGISTRY_TOKEN (edgectl registry token)",
        )
    if not url.startswith(("http://", "https://")):
        raise RegistryRequestError(
            f"registry URL {url!r} is not http(s)", hint=f"e.g. --registry {DEFAULT_URL}"
        )
    client = RegistryClient(url, token)
    try:
        yield client
    except RegistryError as exc:
        if exc.status is None or exc.status >= 500:
            raise RegistryUnavailableError(exc.message, exc.hint) from None
        raise RegistryRequestError(exc.message, exc.hint) from None
    finally:
        client.close()


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)


def push_command(
    bundle: Annotated[Path, typer.Argument(help="A signed .edgebundle archive (edgectl build writes them).")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Upload a signed bundle; the registry verifies signature and hashes and stores it by content."""
    from edgectl.output import console, emit_json
    from toolchain.errors import UserInputError

    if not bundle.is_file():
        hint = "push the .edgebundle archive, not the bundle folder" if bundle.is_dir() else "check the path"
        raise UserInputError(f"{bundle} is not a bundle archive file", hint=hint)
    with registry_client(registry, token) as client:
        result = client.push(bundle)
    if as_json:
        emit_json("push", result)
        return
    state = "registered" if result.created else "already registered (nothing changed)"
    console.print(
        f"{result.model} v{result.version} for {result.target}: {state}\n"
        f"archive sha256 {result.archive_sha256} ({result.archive_size} bytes"
        f"{', stored' if result.stored_bytes else ', same bytes already stored'})"
    )
