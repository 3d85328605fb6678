"""iOS: a Core ML ML Program package (.mlpackage) converted from the PyTorch source by coremltools.

    PyTorch source ─▶ wrapper (image input, labels, detector outputs) ─trace─▶ ct.convert (ML Program,
      FP16 or FP32 compute, the profile's deployment target) ─▶ weight compression (--precision int8,
      --palettize N) ─▶ [detector: + NonMaximumSuppression] ─▶ model.mlpackage
      ─▶ structural checks (read back from disk) ─▶ numerical check ─▶ report

The numerical check is Core ML's own predictions on the validation data where Core ML runs (macOS); on
other hosts it is the FP16 emulation of `toolchain.backends.coreml.emulate`, and the report says which. Either way
the converter returns the report, so the pipeline gates on it without running the package itself. The
manifest's `coreml` section records the package: its features, labels, deployment target, compute units,
how the weights are stored, the NMS stage, and which checks ran.
"""

from __future__ import annotations

import re

from edgebase.deps import import_coremltools, output_to, version_of
from edgebundle.manifest import CoreMLReport, NMSParams
from toolchain.converters.base import BuildContext, ConvertedArtifact, Converter, ConverterResult, register
from toolchain.errors import UserInputError

PACKAGE = "model.mlpackage"


def _identifier(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"x_{cleaned}"


@register
class CoreMLConverter(Converter):
    runtime = "coreml"
    name = "coremltools"
    requires = (("coremltools", "coreml"), ("torch", "build"))
    # Core ML has no ONNX front end: the PyTorch model itself is traced and converted
    source_kinds = frozenset({"torchscript", "torch-export", "torch-entrypoint", "ultralytics"})
    int8_needs_calibration = False  # int8 here is weight-only quantization

    def convert(self, ctx: BuildContext) -> ConverterResult:
        from toolchain.backends.coreml import checks as coreml_checks
        from toolchain.backends.coreml import compress as coreml_compress
        from toolchain.backends.coreml import detector as coreml_detector
        from toolchain.backends.coreml import model as cm
        from toolchain.backends.coreml import package as coreml_package

        options = ctx.profile.runtime_options()
        if options.convert_to != "mlprogram":
            raise UserInputError(
                f"target {ctx.profile.name} asks for Core ML {options.convert_to!r}; edgectl builds ML Programs",
                hint="set options.convert_to: mlprogram in the target profile",
            )
        target = options.minimum_deployment_target
        units = options.compute_units
        if units not in cm.COMPUTE_UNITS:
            raise UserInputError(
                f"target {ctx.profile.name} names Core ML compute units {units!r}",
                hint=f"options.compute_units takes one of: {', '.join(cm.COMPUTE_UNITS)}",
            )
        if ctx.precision not in ("fp32", "fp16", "int8"):
            raise UserInputError(f"Core ML has no {ctx.precision} mode", hint="pass fp32, fp16 or int8")
        if ctx.source is None or ctx.fp32_onnx is None:
            raise UserInputError(
                "the ios target converts from a PyTorch model",
                hint="pass TorchScript, .pt2, Ultralytics or an entry point",
            )
        from toolchain.onnx_export import tensor_specs

        compute = "fp32" if ctx.precision == "fp32" else "fp16"
        log = ctx.workdir / "coreml.log"
        with output_to(log):  # coremltools' import warnings and progress bars, Ultralytics' summaries
            ct = import_coremltools()
            module = cm.source_module(ctx.source)
        versions = {"coremltools": version_of("coremltools"), "torch": version_of("torch")}
        image = cm.image_input(ctx.preprocessing, ctx.input_shape)
        detector = ctx.task == "detect" and ctx.source.kind == "ultralytics"
        notes: list[str] = []
        plan = cm.Conversion(
            module=module,
            input_shape=list(ctx.input_shape),
            image=image,
            input_name=cm.IMAGE_INPUT if image else _identifier(ctx.input_name),
            compute_precision=compute,
            deployment_target=target,
        )
        nms = None
        if detector:
            if image is None:
                raise UserInputError(
                    "a Core ML detector pipeline takes an image input (1 or 3 channels)",
                    hint="check --input-shape and the color flags",
                )
            classes = tensor_specs(ctx.fp32_onnx)[1][0].shape[1] - 4
            if classes != len(ctx.labels):
                raise UserInputError(
                    f"the detector scores {classes} classes but has {len(ctx.labels)} labels",
                    hint=f"pass --labels with {classes} lines, or none to use the model's own names",
                )
            versions["ultralytics"] = version_of("ultralytics")
            nms = ctx.nms or NMSParams()
            height, width = image.height_width
            plan.head = coreml_detector.detector_head(len(ctx.labels), height, width)
            plan.output_names = [coreml_detector.RAW_CONFIDENCE, coreml_detector.RAW_COORDINATES]
        else:
            self._plan_outputs(ctx, plan, notes)

        with output_to(log):
            mlmodel = cm.convert(ct, plan)
            mlmodel, mode, bits, granularity = coreml_compress.compress(
                ct, mlmodel, ctx.precision, ctx.palettize
            )
            weights = coreml_compress.weights_report(
                mode, bits, granularity, coreml_compress.compressed_tensors(mlmodel, mode), compute
            )
            if detector:
                mlmodel = coreml_detector.nms_pipeline(ct, mlmodel, nms, ctx.labels)
            cm.describe(
                mlmodel,
                source=ctx.source,
                task=ctx.task,
                precision=ctx.precision,
                weights=weights,
                preprocessing=ctx.preprocessing,
                edgectl_version=version_of("edgectl"),
            )
            package = ctx.workdir / PACKAGE
            mlmodel.save(str(package))

        info = coreml_package.read_package(package)
        expected = coreml_checks.Expected(
            input_name=plan.input_name,
            input_shape=plan.input_shape,
            image=image,
            labels=list(ctx.labels) if (plan.labels or detector) else [],
            classifier=bool(plan.labels),
            nms=nms,
            output_names=plan.output_names,
            deployment_target=target,
            compute_precision=compute,
            weights_mode=mode,
            source_sha256=ctx.source.sha256,
            edgectl_version=version_of("edgectl"),
        )
        checks = coreml_checks.structural_checks(info, expected)
        broken = coreml_checks.failed(checks)
        if broken:
            raise coreml_package.PackageCheckError(
                "the Core ML package fails its structural checks: "
                + "; ".join(f"{c.name} ({c.detail})" for c in broken),
                hint="this is a bug in edgectl's Core ML conversion; please report it with the model",
            )
        notes.insert(0, weights.summary)
        report, numerical, predicted = self._numerical(ctx, package, info, compute, notes)
        coreml = CoreMLReport(
            model_type="pipeline" if detector else "mlprogram",
            deployment_target=target,
            specification_version=max(info.specification_versions),
            compute_precision=compute,
            compute_units=units,
            weights=weights,
            inputs=info.inputs,
            outputs=info.outputs,
            labels=info.labels,
            image_scale=image.scale if image else None,
            image_bias=list(image.bias) if image else [],
            std_in_model=list(image.std_in_model) if image else [],
            softmax_added=plan.softmax,
            nms=info.nms,
            structural_checks=checks,
            numerical_check=numerical,
            macos_predict=predicted,
            notes=notes,
        )
        validation_notes = notes + ([numerical] if numerical and not predicted else [])
        artifact = ConvertedArtifact(
            package, "model", "mlpackage", ctx.precision, validation=report, notes=validation_notes
        )
        return ConverterResult(
            [artifact], validation=report, versions=versions, manifest_sections={"coreml": coreml}
        )

    def _plan_outputs(self, ctx: BuildContext, plan, notes: list[str]) -> None:
        """A classifier (labels, probabilities) when the outputs allow it, else the model's own outputs."""
        from toolchain.backends.coreml import model as cm
        from toolchain.onnx_export import tensor_specs

        _, outputs = tensor_specs(ctx.fp32_onnx)
        single = len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[0] == 1
        if ctx.task == "classify" and single and ctx.labels and outputs[0].shape[1] == len(ctx.labels):
            plan.labels = list(ctx.labels)
            reference = ctx.sample_reference or []
            if not reference:
                import torch

                with torch.no_grad():
                    reference = [plan.module(torch.rand(*plan.input_shape)).numpy()]
            plan.softmax = not cm.are_probabilities(reference)
            if plan.softmax:
                notes.append(
                    "the model outputs logits: a softmax is appended, so the package's probabilities "
                    "(Vision's confidences) are in [0, 1]; the top-1 class is unchanged"
                )
            return
        if ctx.task == "classify":
            notes.append(
                f"not a Core ML classifier: {len(ctx.labels)} labels for outputs {[o.shape for o in outputs]}; "
                "pass --labels with one label per class"
            )
        plan.output_names = [_identifier(o.name) for o in outputs]

    def _numerical(self, ctx: BuildContext, package, info, compute: str, notes: list[str]):
        """(report, what the check was, whether Core ML itself predicted): macOS predicts, others emulate."""
        from toolchain.backends.coreml import emulate as coreml_emulate
        from toolchain.backends.coreml import package as coreml_package
        from toolchain.runners import runs_on_host

        if not ctx.sample_reference:  # no --val or --calib: the pipeline has nothing to judge with
            notes.append("no --val or --calib data: no numerical check ran")
            return None, None, False
        if runs_on_host("coreml"):
            report = ctx.evaluate(package)
            return report, "Core ML predictions (macOS) against the FP32 reference on the same data", True
        emulation = coreml_emulate.emulate(
            ctx.fp32_onnx,
            ctx.workdir / "coreml_emulation.onnx",
            coreml_package.dense_weights(info),
            fp16=compute == "fp16",
        )
        if emulation.unmatched:
            notes.append(
                f"{len(emulation.unmatched)} compressed weights of the package have no counterpart in the ONNX "
                "reference; the emulation keeps those in FP16 without their compression error"
            )
        return ctx.evaluate(emulation.path), emulation.describe(), False
