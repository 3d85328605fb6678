"""`edgectl registry serve|token|tokens|revoke-token|broker-files`: run the cloud registry and administer it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgectl.fleet import DEFAULT_URL, AsJson, RegistryToken, RegistryUrl, registry_client

if TYPE_CHECKING:
    from registry_api.schemas import TokenInfo

registry_app = typer.Typer(help="Run and administer the cloud registry.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")


@registry_app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 8080,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Settings file (YAML/JSON); EDGECTL_REGISTRY_* variables win."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the registry: API, device API and dashboard (/ui). Migrates the database on start."""
    import logging

    from toolchain.errors import MissingDependencyError, UserInputError

    try:
        import uvicorn

        from cloud_registry.core.config import CONFIG_FILE_ENV, Settings
        from cloud_registry.main import create_app
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "fastapi", "registry", "the registry") from None
    if config is not None:
        if not config.is_file():
            raise UserInputError(
                f"settings file {config} does not exist", hint="pass a YAML or JSON file of settings"
            )
        os.environ[CONFIG_FILE_ENV] = str(config)
    if log_level not in ("debug", "info", "warning", "error"):
        raise UserInputError(
            f"--log-level {log_level!r} is not one of debug, info, warning, error",
            hint="e.g. --log-level info",
        )
    try:
        settings = Settings()
    except ValueError as exc:
        first = str(exc).splitlines()
        raise UserInputError(
            f"registry settings are invalid: {' '.join(first[:3])}",
            hint="see docs/registry.md for every setting",
        ) from None
    if settings.jobs_runner == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise MissingDependencyError("ray", "jobs-ray", "retraining jobs on Ray (jobs_runner: ray)")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=log_level, access_log=log_level == "debug"
    )


@registry_app.command("token")
def token_command(
    name: Annotated[str, typer.Argument(help="A name for the token (who or what uses it).")],
    role: Annotated[str, typer.Option("--role", help="read-only, deployer or admin.")] = "deployer",
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Create an API token (needs an admin token); it is shown once."""
    from edgectl.output import emit_or_print
    from toolchain.errors import UserInputError

    if role not in ("read-only", "deployer", "admin"):
        raise UserInputError(
            f"--role {role!r} is not one of read-only, deployer, admin", hint="e.g. --role deployer"
        )
    with registry_client(registry, token) as client:
        created = client.create_token(name, role)
    text = f"{created.role} token {created.name} (shown once): {created.token}"
    emit_or_print(as_json, "token", created, text)


@registry_app.command("tokens")
def tokens_command(
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """List API tokens with their roles and whether they are revoked (never their secrets; admin only)."""
    from rich.table import Table

    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        rows = client.tokens()
    if as_json:
        emit_json("tokens", {"tokens": rows})
        return
    table = Table("name", "role", "created", "state")
    for row in rows:
        table.add_row(row.name, row.role, _when(row.created_at), _state(row))
    console.print(table)


@registry_app.command("revoke-token")
def revoke_token_command(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Revoke an API token (admin only); requests carrying it are refused from now on."""
    import re

    from edgectl.output import emit_or_print
    from registry_api.schemas import TOKEN_NAME_RE
    from toolchain.errors import UserInputError

    if not re.fullmatch(TOKEN_NAME_RE, name):
        raise UserInputError(
            f"{name!r} is not a token name (lowercase letters, digits, '.', '_', '-')",
            hint="list the tokens with `edgectl registry tokens`",
        )
    with registry_client(registry, token) as client:
        revoked = client.revoke_token(name)
    text = f"{_state(revoked)}: {revoked.role} token {revoked.name}"
    emit_or_print(as_json, "token-revoked", revoked, text)


def _when(at: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _state(row: TokenInfo) -> str:
    return f"revoked {_when(row.revoked_at)}" if row.revoked_at else "active"


@registry_app.command("broker-files")
def broker_files_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for mosquitto.passwd and mosquitto.acl.")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Write Mosquitto's password file ($7$ PBKDF2-SHA512 hashes) and ACL for the enrolled fleet."""
    from cloud_registry.mosquitto import write_files
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        passwd, acl = client.broker_file("mosquitto.passwd"), client.broker_file("mosquitto.acl")
    passwd_path, acl_path = write_files(out, passwd, acl)
    files = {"password_file": str(passwd_path), "acl_file": str(acl_path)}
    text = f"wrote {passwd_path} and {acl_path}; reload the broker (SIGHUP) to apply them"
    emit_or_print(as_json, "broker-files", files, text)
