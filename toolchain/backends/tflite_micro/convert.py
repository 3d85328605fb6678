"""TensorFlow Lite Micro targets (microcontrollers): a full-integer INT8 model that provably fits the board.

The model takes the TFLite path of the Raspberry Pi and Android targets (the
cached ONNX model through onnx2tf, or a Keras source's SavedModel, then
TensorFlow's converter calibrated on the user's data: `toolchain.backends.tflite.quantize`)
in its full-integer form, int8 input and output. Then, before the pipeline
validates it in the real TFLM interpreter (`toolchain.backends.tflite_micro.runner`):

1. every op must have a TFLM kernel, or the build stops naming the op and the
   layer it comes from (`toolchain.backends.tflite_micro.ops`);
2. the smallest tensor arena that runs it is measured in TFLM itself
   (`toolchain.backends.tflite_micro.arena`), and a stated margin added;
3. flash (model + interpreter + the kernels of exactly its ops) and RAM
   (arena + margin) are set against the profile's budgets and reserves; a
   model that does not fit stops the build with the table and what would
   make it fit (`toolchain.backends.tflite_micro.fit`);
4. C++ sources for a TFLM project go into the bundle's `firmware/`
   (`toolchain.backends.tflite_micro.codegen`), and the fit into the manifest's `memory_fit`.

There is no accuracy repair here: keeping layers in float costs a
microcontroller the flash and RAM it lacks. INT8 that breaks `--max-drop`
fails at the pipeline's gate like every target's.
"""

from __future__ import annotations

from edgebase.deps import version_of
from targets import load_profiles
from toolchain.converters.base import BuildContext, ConvertedArtifact, Converter, ConverterResult, register
from toolchain.errors import UserInputError

ARTIFACT = "model_int8.micro.tflite"  # the compound suffix routes it to the TFLM runner


@register
class TFLiteMicroConverter(Converter):
    runtime = "tflite-micro"
    name = "onnx2tf+tflite-converter+tflm"
    requires = (
        ("tensorflow", "tflite"),
        ("onnx2tf", "tflite"),
        ("ai_edge_litert", "tflite"),
        ("tflite_micro", "mcu"),
    )

    def convert(self, ctx: BuildContext) -> ConverterResult:
        from toolchain.backends.tflite.quantize import TFLiteQuantizer
        from toolchain.backends.tflite_micro import arena as micro_arena
        from toolchain.backends.tflite_micro import codegen as micro_codegen
        from toolchain.backends.tflite_micro import codesize as micro_codesize
        from toolchain.backends.tflite_micro import fit as micro_fit
        from toolchain.backends.tflite_micro import ops as micro_ops
        from toolchain.backends.tflite_micro.model import read_model
        from toolchain.backends.tflite_micro.runner import generous_arena, quantize_input

        if ctx.precision != "int8":  # a user's profile may list more; the pipeline checked the calibration
            raise UserInputError(
                f"TensorFlow Lite Micro targets build full-integer int8, not {ctx.precision}",
                hint="pass --precision int8 (the default)",
            )
        versions = {
            "tensorflow": version_of("tensorflow"),
            "tflite-micro": version_of("tflite-micro"),
        }
        if ctx.saved_model is not None:
            saved_model = ctx.saved_model
        else:
            from toolchain.tf_export import onnx_to_saved_model

            versions["onnx2tf"] = version_of("onnx2tf")
            ctx.progress("onnx2tf: ONNX to TensorFlow (NHWC)", 0, 1)
            saved_model, _ = onnx_to_saved_model(ctx.fp32_onnx, ctx.calibration)
            ctx.progress("onnx2tf: ONNX to TensorFlow (NHWC)", 1, 1)
        ctx.progress("calibrate + quantize (full INT8)", 0, 1)
        quantizer = TFLiteQuantizer(
            saved_model, ctx.calibration, int8_output=True, log=ctx.workdir / "convert.log"
        )
        data = quantizer.int8()
        ctx.progress("calibrate + quantize (full INT8)", 1, 1)
        artifact = ctx.workdir / ARTIFACT
        artifact.write_bytes(data)

        model = read_model(data)
        micro_ops.check_supported(model, ctx.profile.name, ctx.fp32_onnx)
        ctx.progress("measure the tensor arena in TFLM", 0, 1)
        sample = quantize_input(ctx.calibration[:1], model.tensors[model.inputs[0]])
        arena = micro_arena.measure(artifact, sample, generous_arena(model))
        ctx.progress("measure the tensor arena in TFLM", 1, 1)
        fit = micro_fit.fit_report(
            ctx.profile,
            model,
            arena,
            micro_arena.arena_margin(arena.smallest_bytes, model),
            micro_codesize.estimate(list(model.op_counts)),
        )
        floats = micro_ops.float_ops(model)
        if floats:
            listed = ", ".join(f"{op.name} '{op.layer}'" for op in floats)
            fit.notes.append(
                f"ops left in float by the INT8 quantizer (TFLM runs their float kernels): {listed}"
            )
        others = [p for p in load_profiles().values() if p.runtime == self.runtime]
        micro_fit.check(fit, model, ctx.profile, _input_hw(model), others)

        extra = micro_codegen.write_firmware(
            ctx.workdir / micro_codegen.FOLDER, ctx.profile.name, data, model, fit, ctx.labels
        )
        return ConverterResult(
            [ConvertedArtifact(artifact, "model", ctx.profile.artifact_format, "int8")],
            versions=versions,
            converter=None if ctx.saved_model is None else "tflite-converter+tflm",
            extra_files=extra,
            manifest_sections={"memory_fit": fit},
        )


def _input_hw(model) -> tuple[int, int] | None:
    shape = model.tensors[model.inputs[0]].shape
    return (shape[1], shape[2]) if len(shape) == 4 else None
