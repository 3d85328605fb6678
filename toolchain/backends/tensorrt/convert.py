"""Jetson (TensorRT) targets: an ONNX model and a build plan; each device builds its own engine.

TensorRT engines do not load on another GPU or TensorRT version, so the
bundle never depends on one: it carries
- the ONNX model with static shapes at an opset the profile's TensorRT accepts:
  the FP32 model for fp32 and fp16 (TensorRT lowers to FP16 with a builder
  flag), or for int8 a Q/DQ model in the form TensorRT's explicit
  quantization takes (`quantize.tensorrt_explicit`: symmetric int8
  activations, per-channel weights, zero points 0, Q/DQ only around the ops
  TensorRT runs in INT8), calibrated on the user's data and repaired by the
  same accuracy gate as every target;
- the build plan as data in the manifest (`TensorRTPlan`), with the
  equivalent trtexec line.

Validation on the host, with ONNX Runtime, against the FP32 source: the Q/DQ
model itself for int8 (the accuracy the device will see, up to TensorRT's
kernel rounding), an FP16 copy of the model for fp16 (float16 weights and
activations, float32 inputs and outputs), the model as is for fp32.

Where TensorRT and a GPU exist here, the engine is also built (`edgetrt`),
validated and benchmarked like any artifact, and shipped with the exact
TensorRT version, GPU and compute capability it is valid for; devices load it
only where all three match, and build their own otherwise. With
torch-tensorrt installed and a PyTorch source, a second engine is compiled
from the PyTorch module, as an alternative path.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from edgebase.deps import is_available, version_of
from toolchain.converters.base import (
    BuildContext,
    ConvertedArtifact,
    Converter,
    ConverterResult,
    register,
    require_calibration,
)
from toolchain.errors import UserInputError

FP16_NOTE = (
    "validated on the host as an FP16 copy of the ONNX model (float16 weights and activations) in ONNX "
    "Runtime; the device's TensorRT FP16 engine is checked against this bundle's sample by its health check"
)
INT8_NOTE = (
    "INT8 by explicit quantization: this Q/DQ model is what TensorRT builds from, validated here in ONNX "
    "Runtime; TensorRT runs the layers left in float in FP16"
)


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def fp16_copy(fp32_onnx: Path, dest: Path) -> Path:
    """The model with float16 weights and activations, float32 at its inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True)
    onnx.save(model, str(dest))
    return dest


@register
class TensorRTConverter(Converter):
    runtime = "tensorrt"
    name = "onnx+tensorrt-plan"
    requires = (("onnx", "build"), ("onnxruntime", "build"))

    def convert(self, ctx: BuildContext) -> ConverterResult:
        from edgetrt.plan import make_plan

        profile = ctx.profile
        opset = onnx_opset(ctx.fp32_onnx)
        if opset > profile.opset_ceiling:
            raise UserInputError(
                f"the ONNX model has opset {opset}, above {profile.name}'s TensorRT limit {profile.opset_ceiling}",
                hint="export the model at a lower opset (edgectl does for its own exports)",
            )
        versions = {"onnx": version_of("onnx"), "onnxruntime": version_of("onnxruntime")}
        if ctx.precision == "int8":
            artifact = self._int8(ctx)
        elif ctx.precision in ("fp32", "fp16"):
            path = ctx.workdir / "model.onnx"
            shutil.copyfile(ctx.fp32_onnx, path)
            artifact = ConvertedArtifact(path, "model", "onnx", ctx.precision)
            if ctx.precision == "fp16":
                check = fp16_copy(ctx.fp32_onnx, ctx.workdir / "fp16-check.onnx")
                artifact.validation = ctx.evaluate(check)
                artifact.notes.append(FP16_NOTE)
        else:
            raise UserInputError(f"TensorRT targets build fp32, fp16 or int8, not {ctx.precision}", hint="")
        accelerator = profile.hardware.accelerator
        plan = make_plan(
            onnx=artifact.path.name,
            precision=ctx.precision,
            explicit_quantization=ctx.precision == "int8",
            input_shapes={ctx.input_name: list(ctx.input_shape)},
            opset=opset,
            options=profile.runtime_options().model_dump(),
            tensorrt_version=profile.runtime_versions.get("tensorrt"),
            compute_capability=accelerator.compute_capability if accelerator else None,
        )
        artifacts = [artifact]
        engines = []
        built = self._engine_here(ctx, artifact.path, plan)
        if built is not None:
            artifacts.append(built[0])
            engines.append(built[1])
            versions["tensorrt"] = built[1].tensorrt_version
        alternative = self._torch_tensorrt_engine(ctx)
        if alternative is not None:
            artifacts.append(alternative[0])
            engines.append(alternative[1])
            versions["torch-tensorrt"] = version_of("torch-tensorrt")
        plan = plan.model_copy(update={"engines": engines})
        return ConverterResult(
            artifacts,
            validation=artifact.validation,
            repair=artifact.repair,
            versions=versions,
            manifest_sections={"tensorrt": plan},
        )

    def _int8(self, ctx: BuildContext) -> ConvertedArtifact:
        from toolchain.backends.onnxruntime import quantize as quantize

        result = quantize.int8_with_repair(
            ctx.fp32_onnx,
            ctx.workdir,
            require_calibration(ctx, alternative="fp16"),
            ctx.input_name,
            config=quantize.tensorrt_explicit(),
            evaluate=ctx.evaluate,
            sample_outputs=ctx.sample_outputs,
            sample_reference=ctx.sample_reference,
            progress=ctx.progress,
            detector=ctx.task == "detect",  # TensorRT's speed is the device's: not measured on the build host
        )
        path = ctx.workdir / "model_int8_qdq.onnx"
        shutil.copyfile(result.path, path)
        return ConvertedArtifact(
            path, "model", "onnx", "int8", validation=result.report, repair=result.repair, notes=[INT8_NOTE]
        )

    def _engine_here(self, ctx: BuildContext, onnx_path: Path, plan):
        """Build, on this machine's GPU, the engine a device with the same GPU and TensorRT would build."""
        from edgebundle.manifest import EngineBuild
        from edgetrt.build import engine_for
        from edgetrt.cache import EngineCache
        from edgetrt.device import TensorRTUnavailable, device_info

        try:
            info = device_info()
        except TensorRTUnavailable:
            return None
        ctx.progress("building the TensorRT engine on this GPU", 0, 1)
        engine, _key, _ = engine_for(onnx_path, plan, EngineCache(ctx.workdir / "engines"), info)
        ctx.progress("building the TensorRT engine on this GPU", 1, 1)
        path = ctx.workdir / "model.engine"
        path.write_bytes(engine)
        record = EngineBuild(
            tensorrt_version=info.tensorrt_version,
            gpu_name=info.gpu_name,
            compute_capability=info.compute_capability,
            path=path.name,
        )
        note = (
            f"engine for TensorRT {info.tensorrt_version} on {info.gpu_name} (compute {info.compute_capability}) "
            f"only; sha256 {hashlib.sha256(engine).hexdigest()[:16]}"
        )
        return ConvertedArtifact(path, "engine", "tensorrt-engine", ctx.precision, notes=[note]), record

    def _torch_tensorrt_engine(self, ctx: BuildContext):
        """torch-tensorrt's engine from the PyTorch module, where it is installed and a GPU exists."""
        if (
            ctx.source is None
            or not is_available("torch_tensorrt")
            or ctx.source.kind
            not in (
                "torchscript",
                "torch-export",
                "torch-entrypoint",
            )
        ):
            return None
        import torch

        if not torch.cuda.is_available():
            return None
        import torch_tensorrt

        from edgebundle.manifest import EngineBuild
        from edgetrt.device import device_info
        from toolchain.source_export import load_torch_module

        module = load_torch_module(ctx.source).eval().cuda()
        precisions = {torch.float32}
        if ctx.precision in ("fp16", "int8"):
            precisions.add(torch.float16)
        engine = torch_tensorrt.convert_method_to_trt_engine(
            module,
            "forward",
            inputs=[torch_tensorrt.Input(tuple(ctx.input_shape), dtype=torch.float32)],
            ir="dynamo",
            enabled_precisions=precisions,
        )
        path = ctx.workdir / "model_torch_tensorrt.engine"
        path.write_bytes(bytes(engine))
        info = device_info()
        record = EngineBuild(
            tensorrt_version=info.tensorrt_version,
            gpu_name=info.gpu_name,
            compute_capability=info.compute_capability,
            path=path.name,
            builder="torch-tensorrt",
        )
        return ConvertedArtifact(path, "engine-torch", "tensorrt-engine", ctx.precision), record
