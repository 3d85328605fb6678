"""ONNX Runtime on the host's CPU: how `onnxruntime` artifacts are validated and benchmarked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import ORT_DTYPES, TensorSpec


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
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = [d if isinstance(d, int) and d > 0 else 1 for d in first.shape]
        self.input_dtype = np.dtype(ORT_DTYPES.get(first.type, "float32"))

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(self.input_dtype, copy=False)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: self.prepare(batch)})

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(value) -> TensorSpec:
            shape = [d if isinstance(d, int) and d > 0 else -1 for d in value.shape]
            return TensorSpec(name=value.name, shape=shape, dtype=ORT_DTYPES.get(value.type, "float32"))

        return [spec(v) for v in self.session.get_inputs()], [spec(v) for v in self.session.get_outputs()]


RUNNER = OnnxRuntimeRunner  # what `toolchain.runners` opens artifacts of this runtime with
