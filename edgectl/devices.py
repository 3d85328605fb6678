"""`edgectl devices list|show|enroll|revoke`: the fleet as the registry sees it, enrollment and revocation."""

from __future__ import annotations

from typing import Annotated

import typer

from edgectl.fleet import DEFAULT_URL, AsJson, RegistryToken, RegistryUrl, registry_client

devices_app = typer.Typer(
    help="List and inspect fleet devices; enroll and revoke them.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def list_command(
    target: Annotated[str | None, typer.Option("--target")] = None,
    group: Annotated[str | None, typer.Option("--group")] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    online: Annotated[
        bool | None, typer.Option("--online/--offline", help="Only online or offline devices.")
    ] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Devices with presence, model version, slot and health."""
    from rich.table import Table

    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        rows = client.devices(target=target, group=group, tag=tag, online=online)
    if as_json:
        emit_json("devices", {"devices": rows})
        return
    table = Table("device", "target", "group", "presence", "model", "slot", "desired", "health")
    for d in rows:
        model = f"{d.model.name} v{d.model.version}" if d.model.name else ""
        table.add_row(
            d.name,
            d.target,
            d.group or "",
            "online" if d.online else "offline",
            model,
            d.model.slot or "",
            str(d.desired_version or ""),
            d.health,
        )
    console.print(table)


@devices_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Device id.")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """One device: profile, tags, presence, current and desired version, last telemetry."""
    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        d = client.device(name)
    if as_json:
        emit_json("device", d)
        return
    model = f"{d.model.name} v{d.model.version} (slot {d.model.slot})" if d.model.name else "none"
    console.print(
        f"[bold]{d.name}[/] target {d.target}, group {d.group or '-'}, tags {', '.join(d.tags) or '-'}\n"
        f"{'online' if d.online else 'offline'}, health {d.health}, agent {d.agent_version or '?'}\n"
        f"model {model}; desired {d.desired_version or '-'}; last update {d.last_update_state or '-'}"
    )
    inference = (d.last_telemetry or {}).get("inference")
    if inference:
        console.print(
            f"last telemetry: {inference['count']} inferences, {inference['errors']} errors, "
            f"p95 {inference.get('latency_ms_p95')} ms"
        )


@devices_app.command("enroll")
def enroll_command(
    group: Annotated[str | None, typer.Option("--group", help="Group the device joins.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the device gets (repeat).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Pin the device id this token enrolls.")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", help="Seconds the token stays valid.")] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Create a one-time enrollment token for a new device (`edgectl-agent` spends it)."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        created = client.enrollment_token(group=group, tags=tag or [], name=name, ttl_s=ttl)
    emit_or_print(
        as_json, "enrollment-token", created, f"enrollment token (one use, shown once): {created.token}"
    )


@devices_app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(help="Device id.")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Revoke a device (needs an admin token): its API token and MQTT password stop working at once."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        revoked = client.revoke_device(name)
    emit_or_print(
        as_json,
        "device",
        revoked,
        f"revoked device {revoked.name}: its token no longer works, and the broker's password file "
        "and ACL no longer list it",
    )
