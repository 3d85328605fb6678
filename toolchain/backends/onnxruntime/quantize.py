"""Static QDQ INT8 for ONNX models, calibrated on the user's data, with the accuracy repair.

Hardware specialisation is a function that returns a generic `QuantConfig`,
not a subclass: `onnxruntime_cpu()` (uint8 asymmetric activations, int8
per-channel weights: what ONNX Runtime's CPU kernels run fastest) and
`tensorrt_explicit()` (the Q/DQ form TensorRT's explicit quantization takes:
symmetric int8 activations and per-channel weights, zero points 0, Q/DQ only
around the ops TensorRT runs in INT8). Calibration ranges are computed once
per build and cached in a file, so the sensitivity repair can re-quantize with
some layers kept in float without re-running calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import ValidationReport

if TYPE_CHECKING:
    from toolchain.repair import Int8Search
    from toolchain.speed import SpeedCheck

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


@dataclass(frozen=True)
class QuantConfig:
    """How a runtime wants its QDQ model; the quantizer itself knows no hardware."""

    name: str
    activation_type: str = "QUInt8"  # onnxruntime.quantization.QuantType member name
    weight_type: str = "QInt8"
    activation_symmetric: bool = False
    per_channel: bool = True
    calibrate_method: str = "MinMax"  # onnxruntime.quantization.CalibrationMethod member name
    op_types: tuple[str, ...] | None = None  # what is quantized; None: every op ONNX Runtime can quantize
    repair_op_types: tuple[str, ...] = QUANTIZABLE_OPS  # what the repair ranks and may keep in float
    extra_options: dict[str, object] = field(default_factory=dict)


def onnxruntime_cpu() -> QuantConfig:
    return QuantConfig(name="onnxruntime-cpu")


# TensorRT runs these in INT8 when Q/DQ surrounds their inputs; the rest it runs in FP16/FP32 and
# fuses, so Q/DQ there only adds conversions (and, on a detector head's Concat, loses the scores).
TENSORRT_INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")


def tensorrt_explicit() -> QuantConfig:
    """TensorRT's explicit quantization: symmetric int8 everywhere, zero points 0, per-channel weights.

    Weights keep their float values behind a Q/DQ pair (TensorRT quantizes them itself with the
    scale given), every consumer gets its own DQ (TensorRT fuses Q/DQ per consumer), and Q/DQ
    sits on the inputs of the INT8 ops only, as NVIDIA's placement recommendations say.
    """
    return QuantConfig(
        name="tensorrt-explicit",
        activation_type="QInt8",
        weight_type="QInt8",
        activation_symmetric=True,
        op_types=TENSORRT_INT8_OPS,
        repair_op_types=TENSORRT_INT8_OPS,
        extra_options={
            "AddQDQPairToWeight": True,
            "DedicatedQDQPair": True,
            "QuantizeBias": False,
            # Q/DQ goes on the inputs of these ops, not their outputs: TensorRT fuses a conv with what
            # follows it (ReLU, the next layer's input quantization) and wants no Q/DQ in between.
            "OpTypesToExcludeOutputQuantization": list(TENSORRT_INT8_OPS),
        },
    )


def quantizable_nodes(model_path: Path, config: QuantConfig | None = None) -> list[str]:
    import onnx

    op_types = (config or onnxruntime_cpu()).repair_op_types
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def quantize_int8(
    prepared_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    input_name: str,
    calibration_cache: Path,
    *,
    keep_float: list[str] | None = None,
    only: list[str] | None = None,
    config: QuantConfig | None = None,
) -> Path:
    """Write a QDQ INT8 model; `keep_float` nodes stay float, `only` restricts quantization to those nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    config = config or onnxruntime_cpu()
    quantize_static(
        str(prepared_path),
        str(out_path),
        ArrayCalibrationReader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType[config.activation_type],
        weight_type=QuantType[config.weight_type],
        per_channel=config.per_channel,
        calibrate_method=CalibrationMethod[config.calibrate_method],
        op_types_to_quantize=list(config.op_types) if config.op_types is not None else None,
        nodes_to_exclude=list(keep_float or []),
        nodes_to_quantize=list(only or []),
        calibration_cache_path=str(calibration_cache),
        extra_options={
            "ActivationSymmetric": config.activation_symmetric,
            "WeightSymmetric": True,
            **config.extra_options,
        },
    )
    return out_path


def int8_with_repair(
    fp32_onnx: Path,
    workdir: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    config: QuantConfig,
    evaluate: Callable[[Path], ValidationReport],
    sample_outputs: Callable[[Path], list[np.ndarray]],
    sample_reference: list[np.ndarray],
    progress: Callable[[str, int, int], None],
    detector: bool = False,
    speed: Callable[[Path], SpeedCheck] | None = None,
) -> Int8Search:
    """Quantize the graph (a detector's decode tail in float); if the gate fails, keep the measured-sensitive
    layers in float until it holds (`toolchain.repair.int8_search`).

    The result's report is the best attempt's; whether it passed, and whether it is fast enough, is for the
    caller to judge.
    """
    from toolchain import repair
    from toolchain.detector_head import onnx_decode_tail

    prepared = prepare(fp32_onnx, workdir / "prepared.onnx")
    cache = workdir / "calibration.json"
    counter = iter(range(1_000_000))

    def quantize_keep_float(keep: list[str]) -> Path:
        out = workdir / f"int8-{next(counter)}.onnx"
        progress("calibrate + quantize", 0, 1)
        quantize_int8(prepared, out, calibration, input_name, cache, keep_float=keep, config=config)
        progress("calibrate + quantize", 1, 1)
        return out

    def quantize_only(node: str) -> Path:
        out = workdir / "probe.onnx"
        return quantize_int8(prepared, out, calibration, input_name, cache, only=[node], config=config)

    def rank(excluded: list[str]) -> list[tuple[str, float]]:
        return repair.rank_layers(
            [n for n in quantizable_nodes(prepared, config) if n not in excluded],
            quantize_only,
            sample_outputs,
            sample_reference,
            progress=lambda done, total: progress("rank layer sensitivity", done, total),
        )

    tail = onnx_decode_tail(prepared) if detector else []
    return repair.int8_search(quantize_keep_float, evaluate, rank, fixed_float=tail, speed=speed)
