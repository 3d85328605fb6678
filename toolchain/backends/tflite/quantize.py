"""TFLite models from a SavedModel: float32, float16, full-integer INT8, selective INT8 and int16x8.

INT8 is calibrated once on the user's inputs (TensorFlow's calibrator records
every tensor's range), then quantized as often as the repair search needs:
MLIR's quantizer takes a list of op output tensors to keep in float
("denylisted nodes"), which is what selective quantization means in TFLite.
The last resort keeps INT8 weights with int16 activations
(`EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8`): 256 times
finer activations, at the price of running on TFLite's reference kernels
rather than XNNPACK's.

Input and output types of full-integer models: a float image input becomes
int8 (its scale and zero point go to the manifest, so the caller quantizes a
frame with one multiply-add); integer inputs such as token ids stay as they
are. Outputs become int8 too, except for detectors: an Ultralytics head
concatenates box coordinates in pixels with 0..1 class scores, and one int8
scale for both would erase the scores, so detector outputs stay float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from toolchain.errors import CalibrationError, ExportError

# Ops that only move or reshape data: keeping them in float buys no accuracy, so they are never ranked.
DATA_MOVEMENT_OPS = frozenset(
    {
        "RESHAPE",
        "TRANSPOSE",
        "PAD",
        "PADV2",
        "STRIDED_SLICE",
        "SLICE",
        "GATHER",
        "SPLIT",
        "SPLIT_V",
        "SQUEEZE",
        "EXPAND_DIMS",
        "PACK",
        "UNPACK",
        "QUANTIZE",
        "DEQUANTIZE",
        "SHAPE",
    }
)


def to_model_layout(batch: np.ndarray, model_shape: list[int]) -> np.ndarray:
    """One sample in the source's layout (NCHW, NCW) rearranged to the model's (NHWC, NWC) when they differ."""
    if list(batch.shape) == list(model_shape):
        return batch
    for axes in ((0, 2, 3, 1), (0, 2, 1)):
        if batch.ndim == len(axes) and [batch.shape[a] for a in axes] == list(model_shape):
            return np.ascontiguousarray(batch.transpose(axes))
    raise ExportError(
        f"an input of shape {list(batch.shape)} does not fit the TFLite model's input {list(model_shape)}",
        hint="the ONNX to TensorFlow conversion changed the input more than NCHW to NHWC; report the model",
    )


def tensor_table(model: bytes) -> list[dict]:
    """Every op of a TFLite flatbuffer, in graph order: op name, its first output tensor's name and dtype,
    its input tensor indices, and each output as (index, name, rank)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    table = []
    for op in interpreter._get_ops_details():  # private, but the only API that lists ops
        if not len(op["outputs"]):
            continue
        outputs = []
        for index in op["outputs"]:
            tensor = interpreter._get_tensor_details(int(index), 0)
            outputs.append((int(index), tensor["name"], len(tensor["shape"])))
            if len(outputs) == 1:
                dtype = np.dtype(tensor["dtype"]).name
        table.append(
            {
                "op": op["op_name"],
                "name": outputs[0][1],
                "dtype": dtype,
                "inputs": [int(t) for t in op["inputs"]],
                "outputs": outputs,
            }
        )
    return table


class TFLiteQuantizer:
    """Converts one SavedModel; calibrates at most once per precision mode."""

    def __init__(
        self, saved_model: Path, calibration: np.ndarray | None, *, int8_output: bool, log: Path
    ) -> None:
        from edgebase.deps import import_tensorflow, output_to

        self.log = log
        with output_to(log):
            tf = import_tensorflow()
        self.tf = tf
        self.saved_model = saved_model
        self.int8_output = int8_output
        self._float32: bytes | None = None
        # What every written model goes through: a detector's gets Ultralytics-style metadata appended.
        self.seal: Callable[[bytes], bytes] = lambda model: model
        self._calibrated: bytes | None = None
        self.input_shape, self.input_dtype = self._input_signature()
        # calibration holds samples without their batch axis, in the source's layout
        self.samples = (
            None
            if calibration is None
            else [to_model_layout(s[None], self.input_shape).astype(self.input_dtype) for s in calibration]
        )

    def _converter(self):
        return self.tf.lite.TFLiteConverter.from_saved_model(str(self.saved_model))

    def _convert(self, converter, what: str) -> bytes:
        from edgebase.deps import output_to

        try:
            with output_to(self.log):
                return converter.convert()
        except Exception as exc:  # the converter raises bare Exceptions with multi-line MLIR dumps
            first = next(
                (ln for ln in str(exc).splitlines() if "error" in ln.lower()), str(exc).split("\n")[0]
            )
            raise ExportError(
                f"TensorFlow Lite could not convert the model to {what}: {first.strip()[:300]}",
                hint="build --precision fp32 or fp16, or report the model with this message",
            ) from exc

    def _input_signature(self) -> tuple[list[int], np.dtype]:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.float32())
        details = interpreter.get_input_details()
        if len(details) != 1:
            raise ExportError(
                f"the TensorFlow model has {len(details)} inputs; edgectl builds single-input models",
                hint="wrap the model so it takes one tensor",
            )
        return [int(d) for d in details[0]["shape"]], np.dtype(details[0]["dtype"])

    def _representative(self) -> Iterator[list[np.ndarray]]:
        for sample in self.samples or []:
            yield [sample]

    def _need_calibration(self) -> None:
        if not self.samples:
            raise CalibrationError(
                "INT8 needs calibration data from you; edgectl never invents it",
                hint="pass --calib with a folder of representative inputs (or a .npy), or --precision fp16",
            )

    def float32(self) -> bytes:
        if self._float32 is None:
            self._float32 = self._convert(self._converter(), "float32")
        return self._float32

    def float16(self) -> bytes:
        converter = self._converter()
        converter.optimizations = [self.tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [self.tf.float16]
        return self._convert(converter, "float16")

    def calibrated(self) -> bytes:
        """The float model with recorded ranges: the input of every INT8 variant."""
        if self._calibrated is None:
            self._need_calibration()
            converter = self._converter()
            converter.optimizations = [self.tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = self._representative
            converter.target_spec.supported_ops = [
                self.tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                self.tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
            converter.experimental_new_quantizer = True
            converter._experimental_calibrate_only = True  # what TF's quantization debugger does
            self._calibrated = self._convert(converter, "a calibrated model")
        return self._calibrated

    def _io_types(self):
        tf = self.tf
        input_type = tf.int8 if self.input_dtype == np.float32 else tf.as_dtype(self.input_dtype)
        return input_type, (tf.int8 if self.int8_output else tf.float32)

    def int8(self, keep_float: list[str] | tuple[str, ...] = ()) -> bytes:
        """Full-integer INT8, except the ops whose output tensors are named in `keep_float`."""
        from tensorflow.lite.python import convert

        from edgebase.deps import output_to

        input_type, output_type = self._io_types()
        calibrated = self.calibrated()
        try:
            with output_to(self.log):
                return convert.mlir_quantize(
                    calibrated,
                    input_data_type=input_type,
                    output_data_type=output_type,
                    denylisted_nodes=list(keep_float) or None,
                )
        except Exception as exc:
            raise ExportError(
                f"TensorFlow Lite could not quantize the model to INT8: {str(exc).splitlines()[0][:300]}",
                hint="build --precision fp16, or report the model with this message",
            ) from exc

    def int16x8(self) -> bytes:
        """INT8 weights, int16 activations; float input and output (the int16 interface helps nobody)."""
        self._need_calibration()
        converter = self._converter()
        converter.optimizations = [self.tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = self._representative
        converter.target_spec.supported_ops = [
            self.tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            self.tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        return self._convert(converter, "int16 activations with int8 weights")

    def candidates(self) -> list[str]:
        """Output tensor names of the ops worth keeping in float, in graph order."""
        return [
            row["name"]
            for row in tensor_table(self.calibrated())
            if row["op"] not in DATA_MOVEMENT_OPS and row["dtype"] == "float32"
        ]

    def all_nodes(self) -> list[str]:
        return [row["name"] for row in tensor_table(self.calibrated())]
