"""The check a freshly installed model passes before the agent commits to it (the manifest's `health`).

With a `HealthCheck`: run the bundle's sample input, compare every raw output
with the build host's (`output_0`, `output_1`, ... in the .npz) by cosine
similarity against `min_cosine`, and time `runs` more inferences: the median
must be within `max_latency_ms`. Without one: the model loads and one
inference on zeros of its input spec gives finite outputs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from device_agent.errors import InferenceInputError
from device_agent.preprocess import dequantize, load_tensors

if TYPE_CHECKING:
    import numpy as np

    from device_agent.pipeline import Pipeline


@dataclass
class HealthReport:
    passed: bool
    reason: str | None = None
    cosines: list[float] = field(default_factory=list)
    latency_ms: float | None = None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    if norm == 0.0:
        return 1.0 if np.allclose(x, y) else 0.0
    return float(np.dot(x, y) / norm)


def _zeros_check(pipeline: Pipeline) -> HealthReport:
    import numpy as np

    inputs = [
        np.zeros([d if d > 0 else 1 for d in info.shape], dtype=info.dtype)
        for info in pipeline.session.inputs
    ]
    outputs = pipeline.session.run(inputs)
    for index, value in enumerate(outputs):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return HealthReport(False, f"output {index} is not finite on a zero input")
    return HealthReport(True, "no health section in the manifest: loaded, one inference on zeros ran")


def check_health(pipeline: Pipeline, runs: int) -> HealthReport:
    import numpy as np

    manifest = pipeline.manifest
    health = manifest.health
    if health is None or pipeline.artifact is not manifest.artifacts[0]:
        return _zeros_check(pipeline)
    session = pipeline.session
    try:
        inputs = load_tensors((pipeline.bundle_dir / health.sample_input).read_bytes(), session.inputs)
    except InferenceInputError as exc:
        return HealthReport(False, f"the bundle's sample input does not fit the model: {exc.message}")
    try:
        with np.load(pipeline.bundle_dir / health.sample_outputs, allow_pickle=False) as archive:
            expected = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        return HealthReport(False, f"cannot read the bundle's sample outputs: {str(exc)[:200]}")

    outputs = session.run(inputs)
    cosines = []
    for index, (value, info) in enumerate(zip(outputs, session.outputs, strict=True)):
        want = expected.get(f"output_{index}")
        if want is None:
            return HealthReport(False, f"the sample outputs have no output_{index}")
        got = value if want.dtype.kind in "iu" else dequantize(value, info.quantization)
        if got.size != want.size:
            return HealthReport(False, f"output {index} has {got.size} values, the sample {want.size}")
        similarity = cosine(got, want)
        cosines.append(round(similarity, 6))
        if not similarity >= health.min_cosine:  # NaN fails too
            return HealthReport(
                False, f"output {index} cosine {similarity:.4f} is below {health.min_cosine}", cosines
            )

    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(inputs)
        timings.append((time.perf_counter() - start) * 1000.0)
    latency = statistics.median(timings)
    if health.max_latency_ms is not None and latency > health.max_latency_ms:
        return HealthReport(
            False,
            f"median latency {latency:.2f} ms is over the budget of {health.max_latency_ms} ms",
            cosines,
            latency,
        )
    return HealthReport(True, None, cosines, round(latency, 3))
