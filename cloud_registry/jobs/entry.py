"""`python -m cloud_registry.jobs.entry JOB.json CALLABLE`: call a Python training entry point in its own
process and write what it returns to `<out_dir>/result.json` (the same file a command writes)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from cloud_registry.jobs.contract import TrainingJob, TrainingResult


def load_callable(spec: str):  # type: ignore[no-untyped-def]
    module_name, _, name = spec.partition(":")
    function = getattr(importlib.import_module(module_name), name, None)
    if not callable(function):
        raise SystemExit(f"error: {spec}: {module_name} has no callable {name!r}")
    return function


def main(argv: list[str]) -> int:
    job_path, spec = argv
    job = TrainingJob.read(job_path)
    function = load_callable(spec)
    result = TrainingResult.from_any(function(job), job.out_dir)
    (Path(job.out_dir) / "result.json").write_text(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
