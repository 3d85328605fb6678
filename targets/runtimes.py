"""The runtimes edgectl builds for, one row each: the facts every other place reads.

A row says what artifact a profile of that runtime ships, the file suffixes its artifacts carry,
the module that runs it on the host (imported before a benchmark's memory baseline, so the
runtime's own import is not counted as the model's), the extra that installs that module, and
whether this host can run it at all (Core ML predicts only on macOS). Adding a runtime is one row
here (with its options model in `targets/options.py`) and one package `toolchain/backends/<package>/`:
its `convert.py` registers the converter and its `runner.py` names the host runner (`RUNNER`); both
are found from this table. `tests/toolchain/test_registries.py` fails when any of those is missing.

Data only (the standard library): the device agent and the registry import `targets`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeFacts:
    name: str
    artifact_format: str  # the profile's `artifact_format`; a profile pairing them otherwise is a typo
    suffixes: tuple[str, ...]  # an artifact file of this runtime, by its name's end
    host_module: str | None  # what runs it on the host; None where nothing does (TensorRT needs a GPU)
    extra: str  # the extra that installs `host_module`
    on_host: bool = True  # False where the runner can read the artifact's tensors but not run it here

    @property
    def package(self) -> str:
        """Its backend package: `toolchain.backends.<package>` (convert.py, runner.py, ...)."""
        return self.name.replace("-", "_")


RUNTIMES: dict[str, RuntimeFacts] = {
    row.name: row
    for row in (
        RuntimeFacts("onnxruntime", "onnx", (".onnx", ".ort"), "onnxruntime", "build"),
        RuntimeFacts("tflite", "tflite", (".tflite",), "ai_edge_litert.interpreter", "tflite"),
        RuntimeFacts("tensorrt", "onnx+tensorrt-plan", (".engine",), "tensorrt", "jetson"),
        RuntimeFacts(
            "coreml", "mlpackage", (".mlpackage",), "coremltools", "coreml", sys.platform == "darwin"
        ),
        RuntimeFacts(
            "tflite-micro",
            "tflite-micro",
            (".micro.tflite",),
            "tflite_micro.python.tflite_micro.runtime",
            "mcu",
        ),
    )
}
RUNTIME_NAMES: tuple[str, ...] = tuple(RUNTIMES)


def runtime_for_suffix(name: str) -> str | None:
    """The runtime whose artifacts end like `name`; the longest suffix wins (`.micro.tflite` over `.tflite`)."""
    name = name.lower()
    matches = [(len(s), row.name) for row in RUNTIMES.values() for s in row.suffixes if name.endswith(s)]
    return max(matches)[1] if matches else None
