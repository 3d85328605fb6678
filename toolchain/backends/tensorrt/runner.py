"""A TensorRT engine on this machine's GPU, where TensorRT and a GPU exist (never on the 2-core host)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import TensorSpec


class TensorRTEngineRunner:
    """A TensorRT engine on this machine's GPU (`edgetrt.runner`): where TensorRT and a GPU exist."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require("tensorrt", extra="jetson", purpose="running TensorRT engines")
        from edgetrt.runner import TensorRTRunner

        self._runner = TensorRTRunner(path.read_bytes())
        self.input_name, shape, dtype = self._runner.inputs[0]
        self.input_shape, self.input_dtype = list(shape), np.dtype(dtype)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(self.input_dtype, copy=False)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._runner.run(self.prepare(batch))

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(name: str, shape, dtype) -> TensorSpec:
            return TensorSpec(name=name, shape=list(shape), dtype=np.dtype(dtype).name)

        return [spec(*t) for t in self._runner.inputs], [spec(*t) for t in self._runner.outputs]


RUNNER = TensorRTEngineRunner  # what `toolchain.runners` opens artifacts of this runtime with
