"""`edgectl build`: load source → export ONNX (cached) → per target: convert → validate → benchmark → bundle.

Everything that can be checked before heavy work is checked first (targets,
converters, precisions, signing key, output folder), so a typo fails in a
second, not after a ten-minute export. Each target's files are staged in a
hidden folder of the output directory and published by `edgebundle` only once
complete: a failed build leaves no partial bundle.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgebase.deps import version_of
from edgebundle.manifest import (
    Artifact,
    Lineage,
    Manifest,
    Postprocessing,
    Precision,
    Preprocessing,
    PruningLineage,
    SourceInfo,
    TensorSpec,
    ToolchainInfo,
    ValidationReport,
)
from targets import TargetProfile, get_profile, load_profiles
from toolchain import data as datasets
from toolchain import device_checks
from toolchain.converters import CONVERTERS, BuildContext, get_converter
from toolchain.errors import AccuracyGateError, CalibrationError, UserInputError
from toolchain.sources import is_tensorflow_source
from toolchain.speed import host_threads, relative_latency
from toolchain.validate import EvalData, align_outputs, judge, label_free_detection_data, task_metrics

# The opset edgectl exports at unless a target's ceiling is lower: wide support across runtimes.
# An ONNX source keeps its own opset where the target runs it (`export_opset`).
PREFERRED_OPSET = 17
SENSITIVITY_SAMPLES = 16


class BuildRequest(BaseModel):
    """The CLI's `build` flags, validated."""

    model_config = ConfigDict(extra="forbid")

    model: str
    targets: list[str] = Field(min_length=1)
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    calib: Path | None = None
    val: Path | None = None
    max_drop: float = Field(default=1.0, ge=0.0, le=100.0)
    name: str | None = None
    version: int = Field(default=1, ge=1)
    out: Path = Path("build")
    sign_key: Path
    weights: Path | None = None
    input_shape: list[int] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    color: Literal["RGB", "BGR", "GRAY"] | None = None
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    labels: Path | None = None
    task: Literal["detect", "classify", "other"] | None = None  # None: what the model says (or other)
    calib_limit: int = Field(default=128, ge=1)
    val_limit: int = Field(default=5000, ge=1)
    bench_runs: int = Field(default=50, ge=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    palettize: Literal[4, 6, 8] | None = None
    parent_version: int | None = Field(default=None, ge=1)
    training_data: str | None = Field(default=None, max_length=1000)
    trigger: str | None = Field(default=None, max_length=100)
    int16_activations: bool = False  # TFLite: allow int16 activations (reference kernels, slower than FP32)
    allow_slower_int8: bool = False  # ship INT8 for its size even when it is not faster than FP32 here

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(d <= 0 for d in value)):
            raise ValueError("every axis of --input-shape must be a positive integer")
        return value


class TargetBuild(BaseModel):
    target: str
    precision: Precision
    bundle: Path
    archive: Path
    manifest: Manifest
    export_cached: bool


class Reporter:
    """Progress callbacks; the CLI swaps in a progress bar, tests keep this silent one."""

    def stage(self, text: str) -> None:
        pass

    def advance(self, label: str, done: int, total: int) -> None:
        pass


def _resolve_precision(profile: TargetProfile, asked: str) -> Precision:
    precision = profile.default_precision if asked == "auto" else asked
    if precision not in profile.precisions:
        raise UserInputError(
            f"target {profile.name} does not support --precision {precision}",
            hint=f"it supports: {', '.join(profile.precisions)}",
        )
    return precision


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".edgectl-write-test-"):
            pass
    except OSError as exc:
        raise UserInputError(
            f"output directory {out} is not writable: {exc.strerror or exc}",
            hint="pass --out with a writable folder",
        ) from exc


def effective_preprocessing(req, base: Preprocessing, shape: list[int]) -> Preprocessing:
    """The source's preprocessing with the flags `req` sets (layout, color, scale, mean, std: any object
    with those attributes, None for unset) applied and made to fit the input `shape`."""
    update: dict = {}
    channels_last = len(shape) == 4 and shape[1] not in (1, 3) and shape[3] in (1, 3)
    if channels_last and req.layout is None and base.layout == "NCHW":
        update["layout"] = "NHWC"
    for flag in ("layout", "color", "scale", "mean", "std"):
        value = getattr(req, flag)
        if value is not None:
            update[flag] = value
    pre = base.model_copy(update=update)
    if len(shape) != 4 and req.color is None and req.mean is None and req.std is None:
        pre = pre.model_copy(update={"input": "tensor"})
    if len(shape) == 4:
        channels = shape[1] if pre.layout == "NCHW" else shape[3]
        if req.color is None and channels == 1:
            pre = pre.model_copy(update={"color": "GRAY"})
        for field_name in ("mean", "std"):
            values = getattr(pre, field_name)
            if len(values) == 1:
                pre = pre.model_copy(update={field_name: values * channels})
            elif len(values) != channels:
                raise UserInputError(
                    f"--{field_name} has {len(values)} values, the input has {channels} channels",
                    hint=f"give one value or {channels}",
                )
        pre = pre.model_copy(update={"resize": datasets.input_hw(shape, pre.layout)})
    return pre


def _load_labels(req: BuildRequest, fallback: list[str]) -> list[str]:
    if req.labels is None:
        return fallback
    try:
        return [line.strip() for line in req.labels.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UserInputError(
            f"cannot read labels file {req.labels}: {exc}", hint="one label per line"
        ) from exc


def _eval_data(req, task, pre, shape, calibration, fp32_path, nms) -> EvalData | None:
    if req.val is not None:
        if task == "detect":
            det = datasets.load_detection_set(req.val, pre, shape, req.val_limit)
            return EvalData("val", task, det.inputs, boxes=det.boxes, class_names=det.class_names)
        cls = datasets.load_classification_set(req.val, pre, shape, req.val_limit)
        return EvalData("val", "classify", cls.inputs, labels=cls.labels, class_names=cls.class_names)
    if calibration is not None and task == "detect":  # no labels: FP32's own detections are the ground truth
        from toolchain.runners import open_runner, run_all, runtime_for

        fp32_outputs = run_all(open_runner(runtime_for(fp32_path), fp32_path), calibration)
        return label_free_detection_data(calibration, fp32_outputs, nms)
    if calibration is not None:
        return EvalData("calib", task, calibration)
    return None


def build(req: BuildRequest, reporter: Reporter | None = None) -> list[TargetBuild]:
    from edgebundle import bundle_name_for, load_private_key, write_bundle
    from toolchain.onnx_export import export_onnx, export_opset, onnx_input_shape, tensor_specs
    from toolchain.runners import open_runner, run_all, runs_on_host, runtime_for
    from toolchain.sources import apply_task, check_task_outputs, resolve_source
    from toolchain.tf_export import keras_saved_model

    reporter = reporter or Reporter()
    # torch.jit.load and the TorchScript exporter warn about their own deprecation on every call
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
    warnings.filterwarnings("ignore", message=r".*_decide_input_format.*")
    # 1. everything cheap first
    profiles = [get_profile(name) for name in dict.fromkeys(req.targets)]
    plans = []
    for profile in profiles:
        converter = get_converter(profile)
        converter.check_available()
        plans.append((profile, converter, _resolve_precision(profile, req.precision)))
    private_key = load_private_key(req.sign_key)
    _check_out_dir(req.out)
    if any(p == "int8" and c.int8_needs_calibration for _, c, p in plans) and req.calib is None:
        raise CalibrationError(
            "INT8 needs calibration data from you; edgectl never invents it",
            hint="pass --calib with a folder of representative inputs (or a .npy), or --precision fp32",
        )

    # 2. the source and what it says about itself
    reporter.stage("reading the model")
    source = apply_task(resolve_source(req.model, req.weights), req.task)
    pruning = None  # `edgectl optimize` leaves a sidecar that says how it pruned this very file
    if Path(source.location).is_file():
        from toolchain.optimize.request import read_pruning_record

        pruning = read_pruning_record(Path(source.location), source.sha256)
    tensorflow_source = is_tensorflow_source(source)
    _check_source_kind(source, plans)
    shape = req.input_shape or source.input_shape
    if shape is None and tensorflow_source:
        from toolchain.keras_source import default_shape, describe

        shape = default_shape(describe(Path(source.location)))
    if shape is None and source.kind == "onnx":
        shape = onnx_input_shape(Path(source.location))
        shape = [1 if (i == 0 and d <= 0) else d for i, d in enumerate(shape)]
    if shape is None:
        raise UserInputError(
            f"{source.filename} does not say its input shape", hint="pass --input-shape, e.g. 1,3,224,224"
        )
    pre = effective_preprocessing(req, source.preprocessing, shape)
    name = req.name or Path(source.location.split(":")[-1]).stem
    calibration = datasets.load_calibration(req.calib, pre, shape, req.calib_limit) if req.calib else None
    snapshots = {"calib": _array_sha256(calibration)} if calibration is not None else {}

    results: list[TargetBuild] = []
    exported: dict[int | str, tuple[Path, bool]] = {}
    references: dict[Path, tuple[list[np.ndarray], dict[str, float], list[np.ndarray]]] = {}
    evaluation: EvalData | None = None
    sensitivity_inputs: np.ndarray | None = None  # a few inputs for ranking layer sensitivity
    for profile, converter, precision in plans:
        # the FP32 reference: a checked ONNX export, or a Keras source's static-shape SavedModel
        opset = export_opset(source, profile.opset_ceiling, PREFERRED_OPSET)
        if tensorflow_source:
            if "tf" not in exported:
                reporter.stage("exporting the Keras model to a SavedModel")
                exported["tf"] = keras_saved_model(source, shape)
            fp32_path, cached = exported["tf"]
            inputs, outputs = open_runner("tensorflow", fp32_path).io_specs()
        else:
            if opset not in exported:
                reporter.stage(f"exporting to ONNX (opset {opset})")
                exported[opset] = export_onnx(source, shape, opset)
            fp32_path, cached = exported[opset]
            inputs, outputs = tensor_specs(fp32_path)
        task = source.task
        if task == "other" and req.task is None and len(outputs) == 1 and len(outputs[0].shape) == 2:
            task = "classify" if outputs[0].shape[1] > 1 else task
        check_task_outputs(source, task, [o.shape for o in outputs])
        if evaluation is None:
            reporter.stage("loading validation data")
            evaluation = _eval_data(req, task, pre, shape, calibration, fp32_path, source.nms)
            if evaluation is not None and evaluation.kind == "val":
                snapshots["val"] = _array_sha256(evaluation.inputs)
            if evaluation is not None and task == "detect":
                evaluation.num_classes = len(source.labels) or (outputs[0].shape[1] - 4)
            if evaluation is not None:
                sensitivity_inputs = (calibration if calibration is not None else evaluation.inputs)[
                    :SENSITIVITY_SAMPLES
                ]
        labels = _load_labels(req, source.labels or (evaluation.class_names if evaluation else []))
        if fp32_path not in references and evaluation is not None:
            reporter.stage("scoring the FP32 reference")
            fp32_runner = open_runner(runtime_for(fp32_path), fp32_path)
            ref_outputs = run_all(fp32_runner, evaluation.inputs)
            references[fp32_path] = (
                ref_outputs,
                task_metrics(ref_outputs, evaluation, source.nms),
                run_all(fp32_runner, sensitivity_inputs),
            )

        def evaluate(path: Path, fp32_path: Path = fp32_path, evaluation=evaluation) -> ValidationReport:
            ref_outputs, ref_metrics, _ = references[fp32_path]
            outputs = run_all(open_runner(runtime_for(path), path), evaluation.inputs)
            return judge(
                evaluation,
                ref_outputs,
                ref_metrics,
                align_outputs(ref_outputs, outputs),
                source.nms,
                req.max_drop,
            )

        def sample_outputs(
            path: Path, fp32_path: Path = fp32_path, inputs: np.ndarray | None = sensitivity_inputs
        ) -> list[np.ndarray]:
            outputs = run_all(open_runner(runtime_for(path), path), inputs)
            return align_outputs(references[fp32_path][2], outputs)

        speed = None
        if runs_on_host(profile.runtime) and sensitivity_inputs is not None:
            speed = partial(
                relative_latency, sample=sensitivity_inputs[:1], threads=host_threads(profile.threads)
            )

        workdir = Path(tempfile.mkdtemp(prefix=".edgectl-work-", dir=req.out))
        staging = Path(tempfile.mkdtemp(prefix=".edgectl-staging-", dir=req.out))
        try:
            reporter.stage(f"{profile.name}: converting to {precision}")
            ctx = BuildContext(
                fp32_onnx=None if tensorflow_source else fp32_path,
                saved_model=fp32_path if tensorflow_source else None,
                profile=profile,
                precision=precision,
                workdir=workdir,
                input_name=inputs[0].name,
                calibration=calibration,
                evaluate=evaluate,
                sample_outputs=sample_outputs,
                sample_reference=references[fp32_path][2] if fp32_path in references else [],
                progress=reporter.advance,
                task=task,
                source=source,
                input_shape=list(shape),
                preprocessing=pre,
                labels=labels,
                nms=source.nms,
                palettize=req.palettize,
                speed=speed,
                int16_activations=req.int16_activations,
                allow_slower_int8=req.allow_slower_int8,
            )
            converted, precision, fallback_note = _convert(converter, ctx, req.precision)
            from toolchain.benchmark import benchmark

            artifacts = []
            for index, item in enumerate(converted.artifacts):
                report = item.validation or (converted.validation if index == 0 else None)
                if report is None and evaluation is not None:
                    reporter.stage(f"{profile.name}: validating {item.path.name}")
                    report = evaluate(item.path)
                if report is not None:
                    extra = [fallback_note] if fallback_note and index == 0 else []
                    update = {"notes": report.notes + item.notes + extra}
                    if item.repair is not None and report.repair is None:
                        update["repair"] = item.repair
                    report = report.model_copy(update=update)
                    if not report.passed:
                        raise _gate_error(profile, item.precision, report, item.path.name)
                runtime = runtime_for(item.path)
                bench = None
                if runs_on_host(runtime):  # Core ML predicts only on macOS: no host figures to give
                    reporter.stage(f"{profile.name}: benchmarking {item.path.name}")
                    bench = benchmark(item.path, runtime, threads=profile.threads, runs=req.bench_runs)
                _copy_into(item.path, staging / item.path.name)
                art_in, art_out = open_runner(runtime, item.path).io_specs()
                art_in = [_with_layout(spec, shape, pre.layout) for spec in art_in]
                artifacts.append(
                    Artifact(
                        path=item.path.name,
                        role=item.role,
                        format=item.format,
                        precision=item.precision,
                        inputs=art_in,
                        outputs=art_out,
                        validation=report,
                        benchmark=bench,
                        boxes=item.boxes or ("pixels" if task == "detect" else None),
                    )
                )
            primary = artifacts[0]
            if primary.inputs[0].layout is not None:  # the bundle's preprocessing feeds its primary artifact
                target_pre = pre.model_copy(update={"layout": primary.inputs[0].layout})
            else:
                target_pre = pre
            if labels:
                (staging / "labels.txt").write_text("\n".join(labels) + "\n")
            for relative, extra in converted.extra_files.items():
                _copy_into(extra, staging / relative)
            health = None
            if runs_on_host(runtime_for(converted.artifacts[0].path)):
                reporter.stage(f"{profile.name}: recording the health-check sample")
                sample = device_checks.health_sample(
                    evaluation.inputs if evaluation is not None else calibration,
                    shape,
                    np.dtype(inputs[0].dtype),
                )
                health = device_checks.write_health_sample(
                    staging,
                    converted.artifacts[0].path,
                    sample,
                    threads=profile.threads,
                    max_latency_ms=req.latency_budget_ms or profile.runtime_options().latency_budget_ms,
                )
            drift = None
            if evaluation is not None and fp32_path in references:
                drift = device_checks.drift_reference(
                    evaluation.inputs,
                    references[fp32_path][0],
                    task,
                    None if pre.input == "tensor" else pre.layout,
                    len(labels) or evaluation.num_classes,
                )
            manifest = Manifest(
                name=name,
                version=req.version,
                created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                target=profile.name,
                runtime=profile.runtime,
                precision=precision,
                artifacts=artifacts,
                preprocessing=target_pre,
                postprocessing=Postprocessing(task=task, labels=labels, nms=source.nms),
                source=SourceInfo(kind=source.kind, filename=source.filename, sha256=source.sha256),
                toolchain=ToolchainInfo(
                    edgectl=version_of("edgectl"),
                    converter=converted.converter or converter.name,
                    versions={**converted.versions, **_source_versions(tensorflow_source, opset)},
                ),
                validation=primary.validation,
                benchmark=primary.benchmark,
                health=health,
                drift_reference=drift,
                lineage=Lineage(
                    parent_version=req.parent_version,
                    training_data=req.training_data,
                    data_snapshots=snapshots,
                    trigger=req.trigger,
                    pruning=PruningLineage(**pruning.lineage()) if pruning else None,
                ),
                **converted.manifest_sections,
            )
            reporter.stage(f"{profile.name}: signing the bundle")
            location = write_bundle(
                staging, manifest, private_key, req.out, bundle_name_for(name, req.version, profile.name)
            )
            results.append(
                TargetBuild(
                    target=profile.name,
                    precision=precision,
                    bundle=location.directory,
                    archive=location.archive,
                    manifest=location.manifest,
                    export_cached=cached,
                )
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return results


def _convert(converter, ctx: BuildContext, asked: str):
    """Convert; under `--precision auto`, an INT8 that breaks the budget or is slower than FP32 gives way.

    Returns the result, the precision it has, and the note that says why it is not INT8 (or None).
    With `--precision int8` the error stands, with the table of attempts.
    """
    try:
        converted = converter.convert(ctx)
        report = converted.validation
        if ctx.precision == "int8" and report is not None and not report.passed:
            raise _gate_error(ctx.profile, "int8", report, converted.artifacts[0].path.name)
        return converted, ctx.precision, None
    except AccuracyGateError as exc:
        if asked != "auto" or ctx.precision != "int8":
            raise
        fallback = "fp16" if "fp16" in ctx.profile.precisions else "fp32"
        workdir = Path(tempfile.mkdtemp(prefix="fallback-", dir=ctx.workdir))
        converted = converter.convert(dataclasses.replace(ctx, precision=fallback, workdir=workdir))
        note = f"--precision auto shipped {fallback}, not int8: {exc.message}"
        return converted, fallback, note


def _copy_into(source: Path, dest: Path) -> None:
    """Copy a file, or a folder of files (a Core ML .mlpackage), into the staging folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copyfile(source, dest)


def _array_sha256(array: np.ndarray) -> str:
    """A snapshot hash of data as the build used it (after preprocessing): dtype, shape and bytes."""
    import hashlib

    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check_source_kind(source, plans) -> None:
    """Refuse a target whose converter cannot start from this kind of model, before any work."""
    for profile, converter, _ in plans:
        if converter.accepts(source.kind):
            continue
        takers = [
            name
            for name, p in load_profiles().items()
            if p.runtime in CONVERTERS and CONVERTERS[p.runtime].accepts(source.kind)
        ]
        hint = f"build this model for {', '.join(takers)}" if takers else "no target takes this kind of model"
        if is_tensorflow_source(source):
            what, hint = "a Keras model", f"{hint}, or export the model to ONNX first (tf2onnx)"
        elif source.kind == "onnx":
            what, hint = "an ONNX model", f"{hint}, or pass the PyTorch model it came from"
        else:
            what = f"a {source.kind} model"
        raise UserInputError(
            f"{source.filename} is {what}; target {profile.name} ({profile.runtime}) cannot build from it",
            hint=hint,
        )


def _source_versions(tensorflow_source: bool, opset: int) -> dict[str, str]:
    if tensorflow_source:
        return {"keras": version_of("keras")}
    return {"torch": version_of("torch"), "opset": str(opset)}


def _with_layout(spec: TensorSpec, source_shape: list[int], source_layout: str) -> TensorSpec:
    """Record which axis order an artifact's image input takes: the source's, or its channels-last twin."""
    if len(spec.shape) != 4 or len(source_shape) != 4:
        return spec
    if spec.shape == list(source_shape):
        return spec.model_copy(update={"layout": source_layout})
    n, c, h, w = source_shape
    if source_layout == "NCHW" and spec.shape == [n, h, w, c]:
        return spec.model_copy(update={"layout": "NHWC"})
    return spec


def _gate_error(
    profile: TargetProfile, precision: str, report: ValidationReport, artifact: str = ""
) -> AccuracyGateError:
    kept = len(report.repair.layers_kept_float) if report.repair else 0
    if report.metric:
        what = (
            f"{report.metric} {report.reference[report.metric]:.2f} -> {report.artifact[report.metric]:.2f} "
            f"(drop {report.drop_points:.2f} points)"
        )
    else:
        what = f"output cosine {report.fidelity.cosine:.4f}, top-1 agreement {report.fidelity.top1_agreement}"
    if report.gate == "fp32-detections":
        what += " against FP32's own detections (no --val)"
    tail = len(report.repair.decode_tail_float) if report.repair else 0
    repaired = f" even with {kept} layers kept in float" if kept else ""
    if tail:
        repaired += f" {'and' if kept else 'with'} the {tail}-op decode tail in float"
    which = f" ({artifact})" if artifact else ""
    error = AccuracyGateError(
        f"{profile.name} {precision}{which}: {what} breaks --max-drop {report.max_drop_points}{repaired}",
        hint="give more representative --calib data, raise --max-drop, or build --precision fp32",
    )
    error.report = report
    error.attempts = report.repair.attempts if report.repair else None
    return error
