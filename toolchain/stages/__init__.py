"""The build's stages: each a typed step that the pipeline wraps once for timing, progress and the report.

A stage is a row: its name (the key of its time in the report), the progress line it shows (or None
for a step too quick to show), whether it is needed this time (an ONNX export another target already
made is not), and the function that does it. `toolchain.pipeline` holds the two lists, the build's
and each target's; the functions live beside the state they read and write:

- `state.py`: `BuildState` (the request, the source, data and references shared by every target)
  and `TargetState` (one target's plan, files and results);
- `prepare.py`: plan, source, and for each target the FP32 reference (export, outputs, evaluation
  data, reference scores);
- `convert.py`: the converter, with `--precision auto`'s fallback from INT8;
- `check.py`: validate (and gate), benchmark, device checks;
- `seal.py`: manifest and signing.

Adding a stage is a function in one of these modules and a row in the pipeline's list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _always(*_args: Any) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One step of the build. `describe`, `needed` and `run` take the same arguments: the build's
    state, and for a target stage that target's state."""

    name: str
    run: Callable[..., None]
    describe: Callable[..., str | None]
    needed: Callable[..., bool] = _always

    def __call__(self, reporter: Any, seconds: dict[str, float], *states: Any) -> None:
        """Run the stage if needed: its progress line first, its time recorded under its name."""
        if not self.needed(*states):
            return
        line = self.describe(*states)
        if line is not None:
            reporter.stage(line)
        started = time.perf_counter()
        self.run(*states)
        seconds[self.name] = round(seconds.get(self.name, 0.0) + time.perf_counter() - started, 3)
