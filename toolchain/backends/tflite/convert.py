"""LiteRT (TFLite) targets: Raspberry Pi and Android.

The cached FP32 ONNX model becomes an NHWC SavedModel (onnx2tf, offline; see
`toolchain.tf_export`), or a Keras source is used as is; TensorFlow's own
converter then writes the TFLite file in the precision asked for.

Full-integer INT8, using only int8 ops that XNNPACK accelerates. A detector's decode tail (the
ops after its last feature maps: `toolchain.detector_head`) stays in float from the first
attempt. If that breaks the accuracy budget, the ops whose quantization moves the outputs most
(ranked one at a time, as for ONNX Runtime) stay in float too, the fewest that pass the gate, up
to a quarter of the ops. Every attempt is timed against the FP32 TFLite model on this host, and an
INT8 model slower than it is refused (`require_fast_int8`). int16 activations with int8 weights
run on TFLite's reference kernels, many times slower than FP32, so they are tried only when the
user asks (`--int16-activations`).

The report names the repair and lists every attempt. A profile may ask for
companion artifacts in the same bundle (`options.companion_artifacts`):
`gpu-fp16` (an fp16 TFLite for the GPU delegate) and `ort` (an ONNX Runtime
Mobile `.ort` file of the validated ONNX Runtime INT8 or FP32 model; not for
Keras sources, which have no ONNX model, and the report says so).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgebase.deps import version_of
from edgebundle.manifest import LayerRepair, ValidationReport
from toolchain.converters.base import (
    BuildContext,
    ConvertedArtifact,
    Converter,
    ConverterResult,
    register,
    require_fast_int8,
)
from toolchain.errors import UserInputError

# Selective quantization may keep at most this share of the ranked ops in float before int16 is tried.
MAX_FLOAT_SHARE = 0.25
COMPANIONS = ("gpu-fp16", "ort")
FP16_NOTE = (
    "fp16 weights; the host's LiteRT CPU kernels compute in float32 as XNNPACK does by default, "
    "a GPU delegate computes in fp16"
)

KERAS_CONVERTER = "tflite-converter"  # a Keras source skips onnx2tf
NO_ORT_NOTE = "no ONNX Runtime Mobile .ort file: a Keras source has no ONNX model to make it from"


@register
class TFLiteConverter(Converter):
    runtime = "tflite"
    name = "onnx2tf+tflite-converter"
    requires = (("tensorflow", "tflite"), ("onnx2tf", "tflite"), ("ai_edge_litert", "tflite"))

    def accepts(self, source_kind: str) -> bool:  # anything with an ONNX export, and Keras sources
        return source_kind in ("keras", "saved-model") or super().accepts(source_kind)

    def convert(self, ctx: BuildContext) -> ConverterResult:
        from toolchain.backends.tflite.quantize import TFLiteQuantizer

        versions = {"tensorflow": version_of("tensorflow"), "ai-edge-litert": version_of("ai-edge-litert")}
        if ctx.saved_model is None:
            versions["onnx2tf"] = version_of("onnx2tf")
        companions = list(ctx.profile.runtime_options().companion_artifacts)
        unknown = sorted(set(companions) - set(COMPANIONS))
        if unknown:
            raise UserInputError(
                f"target {ctx.profile.name} asks for unknown companion artifacts {unknown}",
                hint=f"known: {', '.join(COMPANIONS)}",
            )
        detector = ctx.task == "detect" and ctx.saved_model is None
        if ctx.saved_model is not None:
            saved_model = ctx.saved_model
        else:
            from toolchain.detector_head import normalize_boxes
            from toolchain.tf_export import onnx_to_saved_model

            onnx_model = ctx.fp32_onnx
            if detector:  # Ultralytics' TFLite convention: box rows in 0..1 (see toolchain.detector_head)
                onnx_model = normalize_boxes(ctx.fp32_onnx, ctx.workdir / "boxes_normalized.onnx")
            ctx.progress("onnx2tf: ONNX to TensorFlow (NHWC)", 0, 1)
            saved_model, _ = onnx_to_saved_model(onnx_model, ctx.calibration)
            ctx.progress("onnx2tf: ONNX to TensorFlow (NHWC)", 1, 1)
        quantizer = TFLiteQuantizer(
            saved_model, ctx.calibration, int8_output=ctx.task != "detect", log=ctx.workdir / "convert.log"
        )
        if detector:
            from toolchain.detector_head import embed_metadata, ultralytics_metadata

            metadata = ultralytics_metadata(ctx.labels, ctx.input_shape, ctx.profile.name)
            quantizer.seal = lambda model: embed_metadata(model, metadata)
        if ctx.precision not in ("fp32", "fp16", "int8"):
            raise UserInputError(f"TFLite has no {ctx.precision} mode", hint="pass fp32, fp16 or int8")

        path, report, repair = self._primary(ctx, quantizer)
        notes = [FP16_NOTE] if ctx.precision == "fp16" else []
        boxes = ("normalized" if detector else "pixels") if ctx.task == "detect" else None
        artifacts = [
            ConvertedArtifact(
                path, "model", "tflite", ctx.precision, validation=report, notes=notes, boxes=boxes
            )
        ]
        if "gpu-fp16" in companions and ctx.precision != "fp16":
            gpu = ctx.workdir / "model_fp16.tflite"
            gpu.write_bytes(quantizer.seal(quantizer.float16()))
            artifacts.append(
                ConvertedArtifact(gpu, "gpu", "tflite", "fp16", notes=[FP16_NOTE], boxes=artifacts[0].boxes)
            )
        if "ort" in companions and ctx.fp32_onnx is None:
            artifacts[0].notes.append(NO_ORT_NOTE)
        elif "ort" in companions:
            artifacts.append(self._ort(ctx))
            versions["onnxruntime"] = version_of("onnxruntime")
        return ConverterResult(
            artifacts,
            validation=report,
            repair=repair,
            versions=versions,
            converter=KERAS_CONVERTER if ctx.saved_model is not None else None,
        )

    def _primary(
        self, ctx: BuildContext, quantizer
    ) -> tuple[Path, ValidationReport | None, LayerRepair | None]:
        suffix = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}[ctx.precision]
        final = ctx.workdir / f"model{suffix}.tflite"
        if ctx.precision == "fp32":
            final.write_bytes(quantizer.seal(quantizer.float32()))
            return final, None, None
        if ctx.precision == "fp16":
            final.write_bytes(quantizer.seal(quantizer.float16()))
            return final, None, None

        from toolchain import repair
        from toolchain.detector_head import tflite_decode_tail

        counter = iter(range(1_000_000))

        def write(model: bytes) -> Path:
            path = ctx.workdir / f"candidate-{next(counter)}.tflite"
            path.write_bytes(quantizer.seal(model))
            return path

        def quantize(keep: list[str]) -> Path:
            ctx.progress("calibrate + quantize (TFLite)", 0, 1)
            path = write(quantizer.int8(keep))
            ctx.progress("calibrate + quantize (TFLite)", 1, 1)
            return path

        def rank(excluded: list[str]) -> list[tuple[str, float]]:
            every_node = quantizer.all_nodes()
            return repair.rank_layers(
                [name for name in quantizer.candidates() if name not in excluded],
                lambda node: write(quantizer.int8([n for n in every_node if n != node])),
                ctx.sample_outputs,
                ctx.sample_reference,
                progress=lambda done, total: ctx.progress("rank op sensitivity (TFLite)", done, total),
            )

        speed = None
        if ctx.speed is not None:
            fp32 = write(quantizer.float32())
            speed = lambda path: ctx.speed(path, fp32)  # noqa: E731
        tail = tflite_decode_tail(quantizer.calibrated()) if ctx.task == "detect" else []
        result = repair.int8_search(
            quantize,
            ctx.evaluate,
            rank,
            fixed_float=tail,
            speed=speed,
            max_ranked=lambda n: max(1, int(n * MAX_FLOAT_SHARE)),
        )
        if not result.report.passed and ctx.int16_activations:
            result = self._int16(ctx, quantizer, write, result, speed)
        if result.repair is None or result.repair.activation_bits == 8:
            result = require_fast_int8(ctx, result, "the FP32 TFLite model in LiteRT")
        final.write_bytes(result.path.read_bytes())
        return final, result.report, result.repair

    def _int16(self, ctx: BuildContext, quantizer, write, result, speed):
        """INT8 weights with int16 activations: only when the user asked for them (--int16-activations).

        TFLite runs int16x8 on its reference kernels, not XNNPACK's: measured 9 to 12x slower than FP32
        on the tests' detector. The report says so with the measured ratio.
        """
        from toolchain.repair import Int8Search, attempt_row

        if quantizer.input_dtype.kind in "iu":  # TensorFlow cannot calibrate int16x8 with integer inputs
            return result
        ctx.progress("int16 activations (TFLite)", 0, 1)
        path = write(quantizer.int16x8())
        report = ctx.evaluate(path)
        ctx.progress("int16 activations (TFLite)", 1, 1)
        measured = speed(path) if speed else None
        attempts = [*result.repair.attempts, attempt_row("int16-activations", 0, report, measured)]
        summary = result.repair.model_copy(
            update={
                "method": "int16-activations" if report.passed else "none",
                "layers_kept_float": [],
                "decode_tail_float": [],
                "attempts": attempts,
                "activation_bits": 16 if report.passed else 8,
                "p50_vs_fp32": round(measured.ratio, 3) if measured and report.passed else None,
            }
        )
        if not report.passed:
            return Int8Search(
                result.path, result.report.model_copy(update={"repair": summary}), summary, None
            )
        notes = (
            [f"int16 activations (asked for with --int16-activations): {measured.describe()}"]
            if measured
            else []
        )
        report = report.model_copy(update={"repair": summary, "notes": report.notes + notes})
        return Int8Search(path, report, summary, measured)

    def _ort(self, ctx: BuildContext) -> ConvertedArtifact:
        """ONNX Runtime Mobile: the ONNX Runtime converter's validated model, saved in ORT format."""
        from toolchain.converters.base import CONVERTERS

        workdir = ctx.workdir / "ort"
        workdir.mkdir()
        precision = "int8" if ctx.precision == "int8" else "fp32"
        result = CONVERTERS["onnxruntime"].convert(
            dataclasses.replace(ctx, precision=precision, workdir=workdir)
        )
        onnx_model = result.artifacts[0].path
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        from edgebase.deps import output_to

        out = workdir / "converted"
        with output_to(workdir / "convert.log"):
            convert_onnx_models_to_ort(
                onnx_model,
                output_dir=out,
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform="arm",
            )
        produced = next(out.glob("*.ort"))
        final = ctx.workdir / f"model{'_int8' if precision == 'int8' else ''}.ort"
        produced.rename(final)
        return ConvertedArtifact(final, "ort", "ort", precision, repair=result.repair)
