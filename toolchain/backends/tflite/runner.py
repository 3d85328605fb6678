"""The LiteRT interpreter on the host: how `tflite` artifacts are validated and benchmarked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import QuantParams, TensorSpec


class LiteRTRunner:
    """The LiteRT (TFLite) interpreter with XNNPACK, as on a Raspberry Pi or an Android CPU.

    Float inputs in the source's layout are rearranged to the model's (NCHW to NHWC) and
    quantized with the model's own scale and zero point when its input is integer; integer
    outputs are dequantized, so validation compares like with like.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require("ai_edge_litert", extra="tflite", purpose="running TFLite models")
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        first = self.interpreter.get_input_details()[0]
        self._input = first
        self.input_name = first["name"]
        self.input_shape = [int(d) for d in first["shape"]]
        self.input_dtype = np.dtype(first["dtype"])
        self._outputs = self.interpreter.get_output_details()
        # A detector in Ultralytics' TFLite convention (edgectl's included) has box rows in 0..1; they are
        # scaled back to input pixels here, so it is judged against the FP32 model like any other artifact.
        from toolchain.detector_head import embedded_metadata

        metadata = embedded_metadata(path)
        self._box_size = None
        if metadata.get("task") == "detect" and len(self.input_shape) == 4:
            nhwc = self.input_shape[3] in (1, 3, 4) and self.input_shape[1] not in (1, 3, 4)
            height, width = self.input_shape[1:3] if nhwc else self.input_shape[2:4]
            self._box_size = (width, height)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype == self.input_dtype and list(batch.shape) == self.input_shape:
            return batch
        from toolchain.backends.tflite.quantize import to_model_layout

        x = to_model_layout(batch, self.input_shape)
        scale, zero_point = self._input["quantization"]
        if self.input_dtype.kind in "iu" and x.dtype.kind == "f" and scale:
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
        return x.astype(self.input_dtype)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self._input["index"], self.prepare(batch))
        self.interpreter.invoke()
        outputs = []
        for detail in self._outputs:
            value = self.interpreter.get_tensor(detail["index"])
            scale, zero_point = detail["quantization"]
            if value.dtype.kind in "iu" and scale:
                value = (value.astype(np.float32) - zero_point) * np.float32(scale)
            if self._box_size is not None and value.ndim == 3 and value.shape[1] > 4:
                value = value.copy()
                value[:, [0, 2]] *= self._box_size[0]
                value[:, [1, 3]] *= self._box_size[1]
            outputs.append(value)
        return outputs

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(detail) -> TensorSpec:
            scale, zero_point = detail["quantization"]
            dtype = np.dtype(detail["dtype"]).name
            return TensorSpec(
                name=detail["name"],
                shape=[int(d) for d in detail["shape"]],
                dtype=dtype,
                quantization=QuantParams(scale=float(scale), zero_point=int(zero_point)) if scale else None,
            )

        return [spec(self._input)], [spec(d) for d in self._outputs]


RUNNER = LiteRTRunner  # what `toolchain.runners` opens artifacts of this runtime with
