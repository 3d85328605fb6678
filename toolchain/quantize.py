"""INT8 for ONNX Runtime: static QDQ quantization calibrated on the user's data.

Activations are uint8 (asymmetric), weights int8 per channel, the format ONNX
Runtime's CPU kernels run fastest. Calibration ranges are computed once per
build and cached in a file, so the sensitivity repair can re-quantize with
some layers kept in float without re-running calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.deps import require

# Op types whose quantization we rank and may keep in float. ORT quantizes more
# (its registry has a default for the rest); these carry weights or mix ranges.
QUANTIZABLE_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Concat",
    "Sigmoid",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Split",
    "Softmax",
    "Relu",
    "Clip",
)


class ArrayCalibrationReader:
    """Feeds calibration samples to ONNX Runtime, one batch-of-one at a time."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.input_name = input_name
        self.samples = samples
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.samples):
            return None
        sample = self.samples[self.index][None]
        self.index += 1
        return {self.input_name: sample}

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.samples)


def prepare(fp32_path: Path, out_path: Path) -> Path:
    """ORT's recommended pre-processing (graph optimisation + shape inference) before quantizing."""
    require("onnxruntime", extra="build", purpose="INT8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantizable_nodes(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]


def quantize_int8(
    prepared_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    input_name: str,
    calibration_cache: Path,
    *,
    keep_float: list[str] | None = None,
    only: list[str] | None = None,
) -> Path:
    """Write a QDQ INT8 model; `keep_float` nodes stay float, `only` restricts quantization to those nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared_path),
        str(out_path),
        ArrayCalibrationReader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(keep_float or []),
        nodes_to_quantize=list(only or []),
        calibration_cache_path=str(calibration_cache),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return out_path
