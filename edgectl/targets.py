"""`edgectl targets`: the target profiles."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("targets")(targets_command)


def targets_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every target profile: runtime, artifact format, precisions and budgets."""
    from rich.table import Table

    from edgectl.output import console, emit_json
    from targets import load_profiles
    from toolchain.converters import CONVERTERS

    profiles = load_profiles()
    rows = []
    for profile in sorted(profiles.values(), key=lambda p: p.name):
        row = profile.summary()
        row["converter_available"] = profile.runtime in CONVERTERS
        rows.append(row)
    if as_json:
        emit_json("targets", {"targets": rows})
        return
    table = Table(title="edgectl targets")
    for column in (
        "target",
        "runtime",
        "format",
        "default",
        "precisions",
        "RAM",
        "storage",
        "flash",
        "SRAM",
        "build",
    ):
        table.add_column(column)
    fmt = lambda v, unit: "-" if v is None else f"{v} {unit}"  # noqa: E731
    for row in rows:
        table.add_row(
            row["name"],
            row["runtime"],
            row["artifact_format"],
            row["default_precision"],
            ",".join(row["precisions"]),
            fmt(row["memory_mb"], "MB"),
            fmt(row["storage_mb"], "MB"),
            fmt(row["flash_kb"], "KB"),
            fmt(row["sram_kb"], "KB"),
            "yes" if row["converter_available"] else "not yet",
        )
    console.print(table)
