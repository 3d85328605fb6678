"""Run the real CLI entry point in-process and capture what a user would see."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(("error:", "hint:"))]


def run(capsys: pytest.CaptureFixture, *args: object) -> Result:
    from edgectl.main import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def build_flags(keys, out, *, calib=None, val=None, shape: str = "1,1,32,32", **options: object) -> list:
    """The flags of a digits build: input shape, key, output folder, data, and any `--option value`."""
    flags: list = ["--input-shape", shape, "--sign-key", keys[0], "--out", out]
    if calib is not None:
        flags += ["--calib", calib]
    if val is not None:
        flags += ["--val", val]
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", value]
    return flags


def assert_refused(result, out: Path, *needles: str) -> None:
    """One error line with a hint (own line, or after '; ' for bundle errors), non-zero exit, nothing at out."""
    assert result.code != 0
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert "Traceback" not in result.err
    assert "hint:" in result.err or "; " in errors[0], result.err
    for needle in needles:
        assert needle in result.err, result.err
    assert result.out == ""
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
