"""ONNX Runtime targets: the FP32 ONNX model as is, or static QDQ INT8 with accuracy repair."""

from __future__ import annotations

import shutil

from toolchain.converters.base import BuildContext, ConvertedArtifact, Converter, ConverterResult, register
from toolchain.deps import version_of
from toolchain.errors import CalibrationError, UserInputError


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
        if ctx.calibration is None:
            raise CalibrationError(
                "INT8 needs calibration data from you; edgectl never invents it",
                hint="pass --calib with a folder of representative inputs (or a .npy), or --precision fp32",
            )
        from toolchain import quantize, repair

        prepared = quantize.prepare(ctx.fp32_onnx, ctx.workdir / "prepared.onnx")
        cache = ctx.workdir / "calibration.json"
        counter = iter(range(1_000_000))

        def quantize_keep_float(keep: list[str]):
            out = ctx.workdir / f"int8-{next(counter)}.onnx"
            return quantize.quantize_int8(
                prepared, out, ctx.calibration, ctx.input_name, cache, keep_float=keep
            )

        ctx.progress("calibrate + quantize", 0, 1)
        full = quantize_keep_float([])
        report = ctx.evaluate(full)
        ctx.progress("calibrate + quantize", 1, 1)
        result_path, layer_repair = full, None
        if not report.passed:
            candidates = quantize.quantizable_nodes(prepared)

            def quantize_only(node: str):
                out = ctx.workdir / "probe.onnx"
                return quantize.quantize_int8(
                    prepared, out, ctx.calibration, ctx.input_name, cache, only=[node]
                )

            ranked = repair.rank_layers(
                candidates,
                quantize_only,
                ctx.sample_outputs,
                ctx.sample_reference,
                progress=lambda done, total: ctx.progress("rank layer sensitivity", done, total),
            )
            outcome = repair.search_keep_float(
                [name for name, _ in ranked], quantize_keep_float, ctx.evaluate
            )
            metric = report.metric or "cosine"
            full_int8 = {
                "kept_float": 0,
                metric: report.artifact.get(metric, report.fidelity.cosine),
                "passed": "false",
            }
            layer_repair = outcome.summary(len(ranked))
            layer_repair.attempts.insert(0, full_int8)
            if outcome.path is not None:
                result_path, report = outcome.path, outcome.report
            else:
                report = outcome.report or report
            report = report.model_copy(update={"repair": layer_repair})
        shutil.copyfile(result_path, artifact)
        return ConverterResult(
            [ConvertedArtifact(artifact, "model", "onnx", "int8")],
            validation=report,
            repair=layer_repair,
            versions=versions,
        )
