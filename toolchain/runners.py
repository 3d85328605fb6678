"""Run an artifact on the host, one table entry per runtime, for validation and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import ORT_DTYPES, QuantParams, TensorSpec
from targets.runtimes import RUNTIMES, runtime_for_suffix
from toolchain.backends.tflite_micro.runner import MicroRunner


class Runner(Protocol):
    """`run` takes a batch in the source's layout and float, or already in the artifact's own form."""

    input_name: str
    input_shape: list[int]  # the artifact's own input, as a benchmark feeds it
    input_dtype: np.dtype

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The batch exactly as the artifact takes it (layout, dtype, quantization)."""
        ...

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]: ...


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


class SavedModelRunner:
    """TensorFlow running a SavedModel's serving_default signature: the FP32 reference of a Keras source."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require("tensorflow", extra="tflite", purpose="running a TensorFlow SavedModel")
        from edgebase.deps import import_tensorflow

        tf = import_tensorflow()
        if threads:
            with contextlib.suppress(RuntimeError):  # fixed once TensorFlow has started
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        self._loaded = tf.saved_model.load(str(path))
        self._signature = self._loaded.signatures["serving_default"]
        _, kwargs = self._signature.structured_input_signature
        ((self.input_name, spec),) = kwargs.items()
        self.input_shape = [d if d else 1 for d in spec.shape.as_list()]
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._output_names = sorted(self._signature.structured_outputs)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(self.input_dtype, copy=False)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        result = self._signature(**{self.input_name: self.prepare(batch)})
        return [result[name].numpy() for name in self._output_names]

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        _, kwargs = self._signature.structured_input_signature

        def spec(name: str, value) -> TensorSpec:
            shape = [d if d is not None else -1 for d in value.shape.as_list()]
            return TensorSpec(name=name, shape=shape, dtype=np.dtype(value.dtype.as_numpy_dtype).name)

        outputs = self._signature.structured_outputs
        return [spec(n, v) for n, v in kwargs.items()], [spec(n, outputs[n]) for n in self._output_names]


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


def _coreml_runner(path: Path, threads: int | None = None) -> Runner:
    """Core ML packages (`toolchain.backends.coreml.runner`): tensors from the spec anywhere, predictions on macOS."""
    from toolchain.backends.coreml.runner import CoreMLRunner

    return CoreMLRunner(path, threads)


RUNNERS: dict[str, Callable[[Path, int | None], Runner]] = {
    "onnxruntime": OnnxRuntimeRunner,
    "tflite": LiteRTRunner,
    "tensorflow": SavedModelRunner,
    "tensorrt": TensorRTEngineRunner,
    "coreml": _coreml_runner,
    "tflite-micro": MicroRunner,
}


def runtime_for(path: Path) -> str:
    """The runtime of an artifact file or folder by its suffix (targets/runtimes.py), or TensorFlow for a SavedModel folder.

    A bundle may hold artifacts of more than one runtime (an `.ort` beside an `.onnx`, a `.tflite` GPU twin).
    """
    runtime = runtime_for_suffix(path.name)
    if runtime is not None:
        return runtime
    if path.is_dir():
        return "tensorflow"
    raise KeyError(f"no runtime takes {path.name}")


def runs_on_host(runtime: str) -> bool:
    """Whether artifacts of `runtime` can be run here (validated numerically and benchmarked)."""
    row = RUNTIMES.get(runtime)
    return row is None or row.on_host  # the SavedModel runner (a source, not a target) runs anywhere


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
