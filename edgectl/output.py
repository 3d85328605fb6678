"""Shared output: JSON on stdout for machines, tables and progress on stderr/stdout for people."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from toolchain.pipeline import Reporter

JSON_SCHEMA_PREFIX = "edgectl"
# Piped output keeps whole table cells instead of folding them into an 80-column guess.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def plain(value: Any) -> Any:
    """`value` with every pydantic model in it (the registry client's answers) as its JSON form."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def emit_json(kind: str, payload: Any) -> None:
    """One JSON document on stdout: {"schema": "edgectl.<kind>/1", ...payload}; `payload` is a dict or
    a pydantic model, and models inside it are written as their JSON form."""
    document = {"schema": f"{JSON_SCHEMA_PREFIX}.{kind}/1", **plain(payload)}
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def emit_or_print(as_json: bool, kind: str, data: Any, text: str) -> None:
    """`emit_json(kind, data)` under --json, else `text` for people (one line per line, no wrapping)."""
    if as_json:
        emit_json(kind, data)
    else:
        console.print(text, highlight=False, soft_wrap=True)


def parse_numbers(text: str | None, kind: type, flag: str) -> list | None:
    from toolchain.errors import UserInputError

    if text is None:
        return None
    try:
        return [kind(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError as exc:
        raise UserInputError(
            f"{flag} {text!r} is not a comma-separated list of numbers", hint=f"e.g. {flag} 1,3,224,224"
        ) from exc


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class RichReporter(Reporter):
    """Progress bar on stderr: one spinner line per stage, a bar for counted work."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=not enabled,
            transient=False,
        )
        self.task = None
        self.label = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._finish()
        self.progress.stop()

    def _finish(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[-1].total or 1
            self.progress.update(self.task, completed=total, total=total)

    def stage(self, text: str) -> None:
        self._finish()
        self.task = self.progress.add_task(text, total=1)
        self.label = None

    def advance(self, label: str, done: int, total: int) -> None:
        if label != self.label:
            self._finish()
            self.task = self.progress.add_task(label, total=total)
            self.label = label
        self.progress.update(self.task, completed=done, total=total)


def print_attempts(attempts: list[dict[str, Any]]) -> None:
    """The table of INT8 attempts (method, ops kept float, metric, passed, speed), to stderr before an error."""
    from rich.table import Table

    columns = list(dict.fromkeys(key for row in attempts for key in row))
    table = Table(title="INT8 attempts")
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "passed") else "right")
    for row in attempts:
        table.add_row(*(str(row.get(column, "-")) for column in columns))
    err_console.print(table)
