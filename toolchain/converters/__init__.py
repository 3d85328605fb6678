"""The converter table: one `convert` module per runtime package in `toolchain/backends/`,
registered by decorator into CONVERTERS.

A converter turns the cached FP32 ONNX model into the target's artifact(s) at
the asked precision. It may call `ctx.evaluate` to repair its own output (the
INT8 sensitivity repair does), but the decision that a result is fatal stays
with the pipeline. Importing this package imports no runtime: each converter
imports its libraries inside `convert`.
"""

from __future__ import annotations

from toolchain.backends.coreml import convert as _coreml  # noqa: F401
from toolchain.backends.onnxruntime import convert as _onnxruntime  # noqa: F401  (registers itself)
from toolchain.backends.tensorrt import convert as _tensorrt  # noqa: F401
from toolchain.backends.tflite import convert as _tflite  # noqa: F401
from toolchain.backends.tflite_micro import convert as _tflite_micro  # noqa: F401
from toolchain.converters.base import (
    CONVERTERS,
    KNOWN_RUNTIMES,
    BuildContext,
    ConvertedArtifact,
    Converter,
    ConverterResult,
    get_converter,
    register,
)

__all__ = [
    "CONVERTERS",
    "KNOWN_RUNTIMES",
    "BuildContext",
    "ConvertedArtifact",
    "Converter",
    "ConverterResult",
    "get_converter",
    "register",
]
