"""What a bundle carries for the device's own checks: a health-check sample and the drift reference.

- The health check (`manifest.health`): one input exactly as the primary
  artifact takes it (`sample_input.npy`: layout, dtype and quantization
  applied) and that artifact's outputs on it on the build host, dequantized
  to float32 (`sample_outputs.npz`, `output_0`, `output_1`, ...). A device
  that installs the bundle runs the sample and compares before it commits.
- The drift reference (`manifest.drift_reference`): statistics of the
  validation data and of the FP32 model's answers on it, computed with the
  same functions the device agent uses for its telemetry (`edgewire.drift`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgebundle.manifest import DriftSummary, HealthCheck

SAMPLE_INPUT = "sample_input.npy"
SAMPLE_OUTPUTS = "sample_outputs.npz"


def write_health_sample(
    staging: Path,
    artifact: Path,
    sample: np.ndarray,
    *,
    threads: int | None,
    max_latency_ms: float | None,
) -> HealthCheck:
    """Run one sample (batch of 1, source layout, float) through `artifact` and store both in `staging`."""
    from toolchain.runners import open_runner, runtime_for

    runner = open_runner(runtime_for(artifact), artifact, threads)
    prepared = np.ascontiguousarray(runner.prepare(sample[:1]))
    outputs = runner.run(prepared)
    _save(staging / SAMPLE_INPUT, lambda f: np.save(f, prepared, allow_pickle=False))
    arrays = {f"output_{i}": np.asarray(o, dtype=np.float32) for i, o in enumerate(outputs)}
    _save(staging / SAMPLE_OUTPUTS, lambda f: np.savez(f, **arrays))
    return HealthCheck(
        sample_input=SAMPLE_INPUT, sample_outputs=SAMPLE_OUTPUTS, max_latency_ms=max_latency_ms
    )


def _save(path: Path, write) -> None:
    buffer = io.BytesIO()
    write(buffer)
    path.write_bytes(buffer.getvalue())


def health_sample(evaluation_inputs: np.ndarray | None, shape: list[int], dtype: np.dtype) -> np.ndarray:
    """The first real input when there is data; else zeros of the input's shape (still loads and runs)."""
    if evaluation_inputs is not None and len(evaluation_inputs):
        return evaluation_inputs[:1]
    return np.zeros(shape, dtype=dtype)


def drift_reference(
    inputs: np.ndarray, outputs: list[np.ndarray], task: str, layout: str | None, num_classes: int
) -> DriftSummary:
    from edgewire.drift import summarize

    return summarize(inputs, outputs, task, layout, num_classes)
