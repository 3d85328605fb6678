"""ONNX Runtime targets: the FP32 ONNX model as is, or static QDQ INT8 with accuracy repair.

A detector's decode tail stays in float from the first attempt (`toolchain.detector_head`), and
the INT8 model that ships is never slower than the FP32 one on the build host
(`require_fast_int8`).
"""

from __future__ import annotations

import shutil

from edgebase.deps import version_of
from toolchain.converters.base import (
    BuildContext,
    ConvertedArtifact,
    Converter,
    ConverterResult,
    register,
    require_calibration,
    require_fast_int8,
)
from toolchain.errors import UserInputError


@register
class OnnxRuntimeConverter(Converter):
    runtime = "onnxruntime"
    name = "onnxruntime-qdq"
    requires = (("onnx", "build"), ("onnxruntime", "build"))

    def convert(self, ctx: BuildContext) -> ConverterResult:
        versions = {"onnx": version_of("onnx"), "onnxruntime": version_of("onnxruntime")}
        artifact = ctx.workdir / "model.onnx"
        if ctx.precision == "fp32":
            shutil.copyfile(ctx.fp32_onnx, artifact)
            return ConverterResult([ConvertedArtifact(artifact, "model", "onnx", "fp32")], versions=versions)
        if ctx.precision != "int8":
            raise UserInputError(
                f"the onnxruntime converter builds fp32 or int8, not {ctx.precision}",
                hint="pass --precision fp32 or int8",
            )
        from toolchain.backends.onnxruntime import quantize as quantize

        speed = None
        if ctx.speed is not None:
            speed = lambda path: ctx.speed(path, ctx.fp32_onnx)  # noqa: E731
        result = quantize.int8_with_repair(
            ctx.fp32_onnx,
            ctx.workdir,
            require_calibration(ctx),
            ctx.input_name,
            config=quantize.onnxruntime_cpu(),
            evaluate=ctx.evaluate,
            sample_outputs=ctx.sample_outputs,
            sample_reference=ctx.sample_reference,
            progress=ctx.progress,
            detector=ctx.task == "detect",
            speed=speed,
        )
        result = require_fast_int8(ctx, result, "the FP32 ONNX model in ONNX Runtime")
        shutil.copyfile(result.path, artifact)
        return ConverterResult(
            [ConvertedArtifact(artifact, "model", "onnx", "int8")],
            validation=result.report,
            repair=result.repair,
            versions=versions,
        )
