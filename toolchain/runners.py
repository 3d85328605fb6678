"""Run an artifact on the host, one table entry per runtime, for validation and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from toolchain.deps import require


class Runner(Protocol):
    input_name: str

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU with a fixed thread count (the target profile's)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require("onnxruntime", extra="build", purpose="running ONNX models")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


RUNNERS: dict[str, Callable[[Path, int | None], Runner]] = {
    "onnxruntime": OnnxRuntimeRunner,
}


def open_runner(runtime: str, path: Path, threads: int | None = None) -> Runner:
    return RUNNERS[runtime](path, threads)


def run_all(runner: Runner, inputs: np.ndarray) -> list[np.ndarray]:
    """Outputs for every sample, one at a time (edge artifacts have batch size 1), stacked per output."""
    per_output: list[list[np.ndarray]] = []
    for sample in inputs:
        outputs = runner.run(sample[None])
        if not per_output:
            per_output = [[] for _ in outputs]
        for slot, value in zip(per_output, outputs, strict=True):
            slot.append(value[0])
    return [np.stack(values) for values in per_output]
