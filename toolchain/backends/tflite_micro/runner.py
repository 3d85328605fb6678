"""The real TensorFlow Lite Micro interpreter on the host (the `tflite-micro` package), as a runner.

Validation and benchmarks run microcontroller artifacts through it, so the
accuracy reported for a board is TFLM's own, kernels and all. The host has no
fixed arena to respect, so the runner gives the interpreter a generous one
(`generous_arena`); the smallest arena that works is measured separately, in
child processes (`toolchain.backends.tflite_micro.arena`), because TFLM may crash the process
when its arena is too small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import QuantParams, TensorSpec
from toolchain.backends.tflite_micro.model import MicroModel, Tensor, read_model


def generous_arena(model: MicroModel) -> int:
    """An arena no model needs more of: every activation four times over (no reuse, room for scratch
    buffers up to int32 per element), plus per-tensor and per-op bookkeeping and a fixed 64 KB."""
    activations = sum(t.bytes for t in model.tensors if not t.constant)
    return 4 * activations + 2048 * len(model.tensors) + 512 * len(model.ops) + 64 * 1024


def quantize_input(batch: np.ndarray, tensor: Tensor) -> np.ndarray:
    """One batch in the source's layout and float, as the model's input tensor takes it."""
    from toolchain.backends.tflite.quantize import to_model_layout

    dtype = np.dtype(tensor.numpy_dtype)
    if batch.dtype == dtype and list(batch.shape) == tensor.shape:
        return batch
    x = to_model_layout(batch, tensor.shape)
    if dtype.kind in "iu" and x.dtype.kind == "f" and tensor.scale:
        limits = np.iinfo(dtype)
        x = np.clip(np.round(x / tensor.scale) + tensor.zero_point, limits.min, limits.max)
    return np.ascontiguousarray(x.astype(dtype))


def dequantize_output(value: np.ndarray, tensor: Tensor) -> np.ndarray:
    if value.dtype.kind in "iu" and tensor.scale:
        return (value.astype(np.float32) - tensor.zero_point) * np.float32(tensor.scale)
    return value


def _spec(tensor: Tensor) -> TensorSpec:
    quant = None
    if tensor.scale and tensor.type in ("INT8", "UINT8", "INT16"):
        quant = QuantParams(scale=tensor.scale, zero_point=tensor.zero_point or 0)
    return TensorSpec(name=tensor.name, shape=tensor.shape, dtype=tensor.numpy_dtype, quantization=quant)


class MicroRunner:
    """TFLite Micro's interpreter with TFLM's reference kernels, one sample at a time."""

    def __init__(self, path: Path, threads: int | None = None) -> None:  # TFLM runs on one thread
        require("tflite_micro", extra="mcu", purpose="running TFLite Micro models")
        from tflite_micro.python.tflite_micro import runtime

        data = Path(path).read_bytes()
        self.model = read_model(data)
        self.interpreter = runtime.Interpreter.from_bytes(data, arena_size=generous_arena(self.model))
        self._input = self.model.tensors[self.model.inputs[0]]
        self._outputs = [self.model.tensors[i] for i in self.model.outputs]
        self.input_name = self._input.name
        self.input_shape = list(self._input.shape)
        self.input_dtype = np.dtype(self._input.numpy_dtype)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return quantize_input(batch, self._input)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_input(self.prepare(batch), 0)
        self.interpreter.invoke()
        return [
            dequantize_output(self.interpreter.get_output(i), tensor)
            for i, tensor in enumerate(self._outputs)
        ]

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return [_spec(self._input)], [_spec(t) for t in self._outputs]


RUNNER = MicroRunner  # what `toolchain.runners` opens artifacts of this runtime with
