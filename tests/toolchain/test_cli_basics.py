"""The CLI shell: help, targets listing, and a fast start."""

from __future__ import annotations

import subprocess
import sys

from tests.cli import run


def test_help_lists_the_commands(capsys):
    result = run(capsys, "--help")
    assert result.code == 0
    for command in ("build", "targets", "inspect", "verify", "bench", "keys", "demo"):
        assert command in result.out


def test_targets_json_is_stable(capsys):
    result = run(capsys, "targets", "--json")
    assert result.code == 0
    document = result.json()
    assert document["schema"] == "edgectl.targets/1"
    rows = {row["name"]: row for row in document["targets"]}
    assert rows["cpu"]["converter_available"] is True
    assert rows["jetson-nano"]["default_precision"] == "fp16"
    assert set(rows["cpu"]) >= {
        "runtime",
        "artifact_format",
        "precisions",
        "memory_mb",
        "storage_mb",
        "flash_kb",
        "sram_kb",
    }


def test_targets_table(capsys):
    result = run(capsys, "targets")
    assert result.code == 0 and "stm32f746-disco" in result.out and "ios" in result.out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom edgectl.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'onnx', 'onnxruntime', 'ultralytics', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_command_fails(capsys):
    result = run(capsys, "bulid")
    assert result.code != 0
