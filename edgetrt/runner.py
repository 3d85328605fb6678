"""Run a TensorRT engine on numpy arrays: the agent's inference path and the toolchain's validation.

Uses TensorRT 10's name-based I/O (`set_tensor_address`, `execute_async_v3`)
and cuda-python for device memory. One runner owns one execution context and
its buffers; not thread-safe.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def _check(result) -> object:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTRunner:
    def __init__(self, engine: bytes) -> None:
        import numpy as np
        import tensorrt as trt

        from edgetrt.device import _cuda_runtime

        self._np = np
        self._cudart = _cuda_runtime()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise RuntimeError("TensorRT could not load the engine (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cudart.cudaStreamCreate())
        self.inputs: list[tuple[str, tuple[int, ...], np.dtype]] = []
        self.outputs: list[tuple[str, tuple[int, ...], np.dtype]] = []
        self._device: dict[str, int] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            size = int(np.prod(shape)) * dtype.itemsize
            pointer = _check(self._cudart.cudaMalloc(size))
            self._device[name] = int(pointer)
            self.context.set_tensor_address(name, int(pointer))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append((name, shape, dtype))

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        np, cudart = self._np, self._cudart
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for (name, shape, dtype), array in zip(self.inputs, arrays, strict=True):
            host = np.ascontiguousarray(array, dtype=dtype).reshape(shape)
            _check(
                cudart.cudaMemcpyAsync(
                    self._device[name], host.ctypes.data, host.nbytes, to_device, self.stream
                )
            )
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT inference failed")
        results = []
        for name, shape, dtype in self.outputs:
            host = np.empty(shape, dtype=dtype)
            _check(
                cudart.cudaMemcpyAsync(
                    host.ctypes.data, self._device[name], host.nbytes, to_host, self.stream
                )
            )
            results.append(host)
        _check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def close(self) -> None:
        for pointer in self._device.values():
            self._cudart.cudaFree(pointer)
        self._device.clear()
        self._cudart.cudaStreamDestroy(self.stream)

    def __del__(self) -> None:  # buffers are device memory: give them back
        with contextlib.suppress(Exception):
            self.close()
