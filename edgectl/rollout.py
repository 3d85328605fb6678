"""`edgectl rollout create|list|status|pause|resume|abort|rollback`: staged rollouts on the registry."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgectl.fleet import DEFAULT_URL, AsJson, RegistryToken, RegistryUrl, registry_client

if TYPE_CHECKING:
    from registry_api.schemas import RolloutInfo

rollout_app = typer.Typer(
    help="Roll a model version out to the fleet in waves, gated on telemetry.", no_args_is_help=True
)
Reason = Annotated[str | None, typer.Option("--reason", help="Recorded with the decision.")]
RolloutId = Annotated[int, typer.Argument(help="Rollout id (edgectl rollout list).", min=1)]


def register(app: typer.Typer) -> None:
    app.add_typer(rollout_app, name="rollout")


def parse_waves(text: str) -> dict[str, Any]:
    """'1,10,50,100' (cumulative percentages) or 'exp:FIRST,FACTOR' (e.g. exp:1,4 for 1, 4, 16, 64, 100)."""
    from toolchain.errors import UserInputError

    hint = "e.g. --waves 1,10,50,100 or --waves exp:1,4"
    try:
        if text.startswith("exp:"):
            first, factor = (float(part) for part in text[4:].split(","))
            if not (0 < first <= 100 and factor > 1):
                raise ValueError
            return {"exponential": {"first_percent": first, "factor": factor}}
        waves = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(
            f"--waves {text!r} is not a list of percentages or exp:FIRST,FACTOR", hint=hint
        ) from None
    if not waves or waves[-1] != 100 or any(b <= a for a, b in itertools.pairwise(waves)) or waves[0] <= 0:
        raise UserInputError(f"--waves {text!r}: percentages must grow and end at 100", hint=hint)
    return {"waves": waves}


def _show(info: RolloutInfo) -> None:
    from rich.table import Table

    from edgectl.output import console

    console.print(
        f"[bold]rollout {info.id}[/] {info.model} v{info.version}: [bold]{info.state}[/]"
        + (f" ({info.reason})" if info.reason else "")
    )
    console.print(f"{info.touched} of {info.total} devices touched; devices per state: {info.devices}")
    table = Table("wave", "percent", "devices", "succeeded", "failed", "state")
    for wave in info.waves:
        table.add_row(
            str(wave.index + 1),
            f"{wave.percent:g}%",
            str(wave.size),
            str(wave.succeeded),
            str(wave.failed),
            wave.state,
        )
    console.print(table)
    if info.waiting:
        console.print(f"waiting: {info.waiting}")
    gates = info.gates or {}
    if gates:
        shown = {
            k: gates.get(k)
            for k in ("failure_rate", "error_rate_increase", "p95_regression", "confidence_psi")
        }
        console.print(
            "gates: " + ", ".join(f"{k} {'—' if v is None else f'{v:.4g}'}" for k, v in shown.items())
        )
    for decision in info.decisions[-5:]:
        console.print(f"  {decision.action}: {decision.reason}")


@rollout_app.command("create")
def create_command(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", help="Version to roll out.", min=1)] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Or an alias (production, staging...).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Only devices of this target.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only devices of this group.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only devices with this tag.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="Only these devices (repeat).")] = None,
    waves: Annotated[str, typer.Option("--waves", help="1,10,50,100 or exp:FIRST,FACTOR.")] = "1,10,50,100",
    success_threshold: Annotated[
        float, typer.Option(help="Share of a wave that must succeed (met at >=).")
    ] = 1.0,
    max_failure_rate: Annotated[float, typer.Option(help="Halt above this failed/rolled-back share.")] = 0.0,
    max_error_rate_increase: Annotated[
        float, typer.Option(help="Halt above this error-rate increase.")
    ] = 0.01,
    max_p95_regression: Annotated[
        float, typer.Option(help="Halt above this p95 latency regression (0.25 = +25%).")
    ] = 0.25,
    max_confidence_psi: Annotated[
        float, typer.Option(help="Halt above this confidence-histogram PSI.")
    ] = 0.25,
    min_inferences: Annotated[int, typer.Option(help="Inferences needed before telemetry gates count.")] = 0,
    bake: Annotated[
        float, typer.Option("--bake", help="Seconds a wave stays healthy before the next.")
    ] = 60.0,
    wave_timeout: Annotated[float, typer.Option("--wave-timeout", help="Seconds a wave may take.")] = 3600.0,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Start rolling MODEL (a --version or an --alias) out to the selected devices."""
    from edgectl.output import emit_json
    from toolchain.errors import UserInputError

    if (version is None) == (alias is None):
        raise UserInputError(
            "give exactly one of --version and --alias",
            hint=f"e.g. edgectl rollout create {model} --version 2",
        )
    body: dict[str, Any] = {
        "model": model,
        "version": version,
        "alias": alias,
        "selection": {
            k: v for k, v in {"target": target, "group": group, "tag": tag, "devices": device}.items() if v
        },
        **parse_waves(waves),
        "policy": {
            "success_threshold": success_threshold,
            "max_failure_rate": max_failure_rate,
            "max_error_rate_increase": max_error_rate_increase,
            "max_p95_regression": max_p95_regression,
            "max_confidence_psi": max_confidence_psi,
            "min_inferences": min_inferences,
            "bake_s": bake,
            "wave_timeout_s": wave_timeout,
        },
    }
    with registry_client(registry, token) as client:
        info = client.create_rollout(body)
    if as_json:
        emit_json("rollout", info)
    else:
        _show(info)


@rollout_app.command("list")
def list_command(
    state: Annotated[
        str | None, typer.Option("--state", help="running, paused, completed, halted...")
    ] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Rollouts, newest first."""
    from rich.table import Table

    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        rows = client.rollouts(state)
    if as_json:
        emit_json("rollouts", {"rollouts": rows})
        return
    table = Table("id", "model", "state", "wave", "touched", "reason")
    for info in rows:
        table.add_row(
            str(info.id),
            f"{info.model} v{info.version}",
            str(info.state),
            f"{info.current_wave + 1}/{len(info.waves)}",
            f"{info.touched}/{info.total}",
            info.reason or "",
        )
    console.print(table)


@rollout_app.command("status")
def status_command(
    rollout_id: RolloutId,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Waves, devices per state, gate values and the latest decisions of a rollout."""
    from edgectl.output import emit_json

    with registry_client(registry, token) as client:
        info = client.rollout(rollout_id)
    if as_json:
        emit_json("rollout", info)
    else:
        _show(info)


def _add_action(action: str, doc: str) -> None:
    def command(
        rollout_id: RolloutId,
        reason: Reason = None,
        registry: RegistryUrl = DEFAULT_URL,
        token: RegistryToken = None,
        as_json: AsJson = False,
    ) -> None:
        from edgectl.output import emit_json

        with registry_client(registry, token) as client:
            info = client.rollout_action(rollout_id, action, reason)
        if as_json:
            emit_json("rollout", info)
        else:
            _show(info)

    command.__doc__ = doc
    rollout_app.command(action)(command)


for _name, _doc in (
    ("pause", "Pause: no new wave starts until resumed."),
    ("resume", "Resume a paused rollout."),
    ("abort", "Stop: no further waves; devices already updated keep the new version."),
    (
        "rollback",
        "Stop, and order every updated device back to its previous version (signed rollback orders).",
    ),
):
    _add_action(_name, _doc)
