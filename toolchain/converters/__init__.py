"""The converter table: one `convert` module per runtime package in `toolchain/backends/`,
registered by decorator into CONVERTERS; the packages are the runtime table's rows (`targets.runtimes`).

A converter turns the cached FP32 ONNX model into the target's artifact(s) at
the asked precision. It may call `ctx.evaluate` to repair its own output (the
INT8 sensitivity repair does), but the decision that a result is fatal stays
with the pipeline. Importing this package imports no runtime: each converter
imports its libraries inside `convert`.
"""

from __future__ import annotations

import importlib

from targets.runtimes import RUNTIMES
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

for _row in RUNTIMES.values():  # each runtime's package registers its converter as it is imported
    importlib.import_module(f"toolchain.backends.{_row.package}.convert")

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
