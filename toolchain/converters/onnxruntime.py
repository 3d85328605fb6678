"""ONNX Runtime targets: the FP32 ONNX model as is, or static QDQ INT8 with accuracy repair."""

from __future__ import annotations

import shutil

from toolchain.converters.base import (
    BuildContext,
    ConvertedArtifact,
    Converter,
    ConverterResult,
    register,
    require_calibration,
)
from toolchain.deps import version_of
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
        from toolchain import quantize

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
        )
        result_path, report, layer_repair = result.path, result.report, result.repair
        shutil.copyfile(result_path, artifact)
        return ConverterResult(
            [ConvertedArtifact(artifact, "model", "onnx", "int8")],
            validation=report,
            repair=layer_repair,
            versions=versions,
        )
