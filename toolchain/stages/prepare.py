"""The stages that come before any target's conversion: plan, source, and each target's FP32 reference.

`plan` checks everything cheap first (targets, converters, precisions, signing key, output folder,
calibration data for INT8), so a typo fails in a second, not after a ten-minute export. `source`
reads the model and the user's data once. For each target, `export` makes its FP32 reference (a
checked ONNX export once per opset, or a Keras source's static-shape SavedModel), `outputs` reads
what it returns and decides the task, `evaluation` loads the validation data once, and `reference`
scores the FP32 model on it once.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgebundle.manifest import Precision, Preprocessing
from targets import TargetProfile, get_profile, load_profiles
from toolchain import data as datasets
from toolchain.converters import CONVERTERS, get_converter
from toolchain.errors import CalibrationError, UserInputError
from toolchain.sources import is_tensorflow_source
from toolchain.stages.state import BuildState, Reference, TargetState
from toolchain.validate import EvalData, label_free_detection_data, task_metrics

# The opset edgectl exports at unless a target's ceiling is lower: wide support across runtimes.
# An ONNX source keeps its own opset where the target runs it (`export_opset`).
PREFERRED_OPSET = 17
SENSITIVITY_SAMPLES = 16


def plan(build: BuildState) -> None:
    req = build.req
    # torch.jit.load and the TorchScript exporter warn about their own deprecation on every call
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
    warnings.filterwarnings("ignore", message=r".*_decide_input_format.*")
    from edgebundle import load_private_key

    for profile in [get_profile(name) for name in dict.fromkeys(req.targets)]:
        converter = get_converter(profile)
        converter.check_available()
        build.targets.append(TargetState(profile, converter, _resolve_precision(profile, req.precision)))
    build.private_key = load_private_key(req.sign_key)
    _check_out_dir(req.out)
    if req.calib is None and any(
        t.precision == "int8" and t.converter.int8_needs_calibration for t in build.targets
    ):
        raise CalibrationError(
            "INT8 needs calibration data from you; edgectl never invents it",
            hint="pass --calib with a folder of representative inputs (or a .npy), or --precision fp32",
        )


def read_source(build: BuildState) -> None:
    """The source and what it says about itself; the calibration data, preprocessed as it says."""
    from toolchain.onnx_export import onnx_input_shape
    from toolchain.sources import apply_task, resolve_source

    req = build.req
    source = build.source = apply_task(resolve_source(req.model, req.weights), req.task)
    if Path(source.location).is_file():  # `edgectl optimize` leaves a sidecar that says how it pruned it
        from toolchain.optimize.request import read_pruning_record

        build.pruning = read_pruning_record(Path(source.location), source.sha256)
    build.tensorflow_source = is_tensorflow_source(source)
    _check_source_kind(source, build.targets)
    shape = req.input_shape or source.input_shape
    if shape is None and build.tensorflow_source:
        from toolchain.keras_source import default_shape, describe

        shape = default_shape(describe(Path(source.location)))
    if shape is None and source.kind == "onnx":
        shape = onnx_input_shape(Path(source.location))
        shape = [1 if (i == 0 and d <= 0) else d for i, d in enumerate(shape)]
    if shape is None:
        raise UserInputError(
            f"{source.filename} does not say its input shape", hint="pass --input-shape, e.g. 1,3,224,224"
        )
    build.shape = shape
    build.pre = effective_preprocessing(req, source.preprocessing, shape)
    build.name = req.name or Path(source.location.split(":")[-1]).stem
    if req.calib:
        build.calibration = datasets.load_calibration(req.calib, build.pre, shape, req.calib_limit)
        build.snapshots["calib"] = _array_sha256(build.calibration)
    for target in build.targets:
        target.export_key = "tf" if build.tensorflow_source else _opset(build, target)
        target.opset = _opset(build, target)


def _opset(build: BuildState, target: TargetState) -> int:
    from toolchain.onnx_export import export_opset

    return export_opset(build.source, target.profile.opset_ceiling, PREFERRED_OPSET)


def describe_export(build: BuildState, target: TargetState) -> str:
    if build.tensorflow_source:
        return "exporting the Keras model to a SavedModel"
    return f"exporting to ONNX (opset {target.opset})"


def export(build: BuildState, target: TargetState) -> None:
    if build.tensorflow_source:
        from toolchain.tf_export import keras_saved_model

        build.exported["tf"] = keras_saved_model(build.source, build.shape)
    else:
        from toolchain.onnx_export import export_onnx

        build.exported[target.opset] = export_onnx(build.source, build.shape, target.opset)


def read_outputs(build: BuildState, target: TargetState) -> None:
    """The reference's inputs and outputs; the task they imply where the model and flags say none."""
    from toolchain.sources import check_task_outputs

    fp32_path, _ = target.fp32(build)
    if build.tensorflow_source:
        from toolchain.runners import open_runner

        target.inputs, target.outputs = open_runner("tensorflow", fp32_path).io_specs()
    else:
        from toolchain.onnx_export import tensor_specs

        target.inputs, target.outputs = tensor_specs(fp32_path)
    source, outputs = build.source, target.outputs
    task = source.task
    if task == "other" and build.req.task is None and len(outputs) == 1 and len(outputs[0].shape) == 2:
        task = "classify" if outputs[0].shape[1] > 1 else task
    check_task_outputs(source, task, [o.shape for o in outputs])
    target.task = task


def load_evaluation(build: BuildState, target: TargetState) -> None:
    """The validation data (or the calibration data, or FP32's own detections), loaded once."""
    req, source = build.req, build.source
    fp32_path, _ = target.fp32(build)
    evaluation = _eval_data(
        req, target.task, build.pre, build.shape, build.calibration, fp32_path, source.nms
    )
    build.evaluation, build.evaluation_loaded = evaluation, True
    if evaluation is not None:
        if evaluation.kind == "val":
            build.snapshots["val"] = _array_sha256(evaluation.inputs)
        if target.task == "detect":
            evaluation.num_classes = len(source.labels) or (target.outputs[0].shape[1] - 4)
        pool = build.calibration if build.calibration is not None else evaluation.inputs
        build.sensitivity_inputs = pool[:SENSITIVITY_SAMPLES]
    build.labels = _load_labels(req, source.labels or (evaluation.class_names if evaluation else []))


def needs_reference(build: BuildState, target: TargetState) -> bool:
    return build.evaluation is not None and target.fp32(build)[0] not in build.references


def score_reference(build: BuildState, target: TargetState) -> None:
    from toolchain.runners import open_runner, run_all, runtime_for

    fp32_path, _ = target.fp32(build)
    runner = open_runner(runtime_for(fp32_path), fp32_path)
    outputs = run_all(runner, build.evaluation.inputs)
    build.references[fp32_path] = Reference(
        outputs=outputs,
        metrics=task_metrics(outputs, build.evaluation, build.source.nms),
        sample_outputs=run_all(runner, build.sensitivity_inputs),
    )


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


def _load_labels(req, fallback: list[str]) -> list[str]:
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


def _array_sha256(array: np.ndarray) -> str:
    """A snapshot hash of data as the build used it (after preprocessing): dtype, shape and bytes."""
    import hashlib

    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check_source_kind(source, targets: list[TargetState]) -> None:
    """Refuse a target whose converter cannot start from this kind of model, before any work."""
    for target in targets:
        profile = target.profile
        if target.converter.accepts(source.kind):
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
