"""What a Core ML package on disk says about itself, and the structural checks it must pass.

Core ML predicts only on macOS, but everything a package declares can be read and checked anywhere:
its inputs and outputs with their types and shapes, the class labels, the deployment target, the NMS
stage of a detector, how Core ML prepares the image (the program's first ops), how the weights are
stored, and the metadata. `read_package` reads the package back from disk, program and weights
included; `structural_checks` compares it with what the build asked for and returns one result per
check, so a test can show that a broken package fails the check that concerns it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebase.deps import import_coremltools
from edgebundle.manifest import CoreMLCheck, CoreMLFeature, CoreMLNMS, NMSParams
from toolchain.backends.coreml.detector import (
    CONFIDENCE,
    CONFIDENCE_INPUT,
    COORDINATES,
    IOU_INPUT,
    RAW_CONFIDENCE,
    RAW_COORDINATES,
    padded_columns,
)
from toolchain.backends.coreml.model import (
    CLASS_LABEL,
    COMPRESSED_OPS,
    META_EDGECTL,
    META_SOURCE_SHA256,
    ImageInput,
)
from toolchain.errors import EdgectlError

_ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "double", "INT32": "int32"}
_COLORS = {"GRAYSCALE": "GRAY", "RGB": "RGB", "BGR": "BGR", "GRAYSCALE_FLOAT16": "GRAY"}
_WEIGHT_CONSUMERS = ("conv", "conv_transpose", "linear", "matmul")
# Core ML computes the image input in float; these are the tolerances of its scale and bias (fp32 consts).
_SCALE_RTOL = 1e-5


class PackageCheckError(EdgectlError):
    """A Core ML package failed a structural check: a conversion bug, never shipped."""


@dataclass
class PackageInfo:
    """A Core ML package as read back from disk."""

    path: Path
    model_type: str  # mlprogram, pipeline, or the spec's other type
    sub_models: list[str]  # the pipeline's model types, in order; [] for a single model
    specification_versions: list[int]  # the package's and every sub-model's
    inputs: list[CoreMLFeature]
    outputs: list[CoreMLFeature]
    program_outputs: list[CoreMLFeature]  # the ML Program's own outputs (before a detector's NMS)
    labels: list[str]  # a classifier's, or the NMS stage's (padding included)
    classifier: bool
    predicted_feature: str | None
    nms: CoreMLNMS | None
    nms_names: dict[str, str]  # the NMS stage's feature names, by role
    image_scale: float | None
    image_bias: list[float]
    op_counts: Counter
    weight_dtypes: set[str]  # the dtypes of the weights that convolutions and matrix products take
    metadata: dict[str, str]  # user-defined
    description: str
    author: str
    license: str
    version: str
    program: object = field(repr=False)  # the MIL program, weights loaded
    loaded_by_core_ml: bool = False  # compiled and loaded by Core ML itself (macOS only)


# --------------------------------------------------------------------------- reading


def feature_of(description) -> CoreMLFeature:
    """A spec FeatureDescription as the manifest's CoreMLFeature."""
    kind = description.type.WhichOneof("Type")
    optional = description.type.isOptional
    if kind == "imageType":
        image = description.type.imageType
        color = _COLORS.get(image.ColorSpace.Name(image.colorSpace), "RGB")
        channels = 1 if color == "GRAY" else 3
        return CoreMLFeature(
            name=description.name,
            kind="image",
            shape=[channels, image.height, image.width],
            dtype="uint8",
            color=color,
            optional=optional,
        )
    if kind == "multiArrayType":
        array = description.type.multiArrayType
        if array.shape:
            shape = [int(d) for d in array.shape]
        else:
            ranges = array.shapeRange.sizeRanges
            shape = [int(r.lowerBound) if r.lowerBound == r.upperBound else -1 for r in ranges]
        return CoreMLFeature(
            name=description.name,
            kind="multiarray",
            shape=shape,
            dtype=_ARRAY_DTYPES.get(name := array.ArrayDataType.Name(array.dataType), name.lower()),
            optional=optional,
        )
    simple = {
        "doubleType": "double",
        "int64Type": "int64",
        "stringType": "string",
        "dictionaryType": "dictionary",
    }
    return CoreMLFeature(
        name=description.name,
        kind=simple.get(kind, "string"),
        dtype="double" if kind == "doubleType" else None,
        optional=optional,
    )


def read_package(path: Path) -> PackageInfo:
    """Read a .mlpackage back from disk: spec, MIL program and weights (and, on macOS, Core ML loads it)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_program

    path = Path(path)
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        model_type = spec.WhichOneof("Type")
        program_spec = spec.pipeline.models[0] if model_type == "pipeline" else spec
        program = load_program(program_spec, program_spec.specificationVersion, model.weights_dir)
    except Exception as exc:  # an unreadable package is a conversion bug: say what failed to load
        raise PackageCheckError(
            f"the Core ML package {path.name} does not load back from disk: {str(exc).splitlines()[0][:200]}",
            hint="this is a bug in the Core ML conversion; please report it with the model",
        ) from exc
    loaded = False
    if sys.platform == "darwin":
        ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)  # Core ML compiles and loads it
        loaded = True
    sub_models = [m.WhichOneof("Type") for m in spec.pipeline.models] if model_type == "pipeline" else []
    versions = [spec.specificationVersion] + [m.specificationVersion for m in spec.pipeline.models]
    main = program.functions["main"]
    labels, classifier = [], False
    for op in main.operations:
        if op.op_type == "classify":
            labels, classifier = [str(c) for c in op.inputs["classes"].val], True
    nms, names = None, {}
    if sub_models[-1:] == ["nonMaximumSuppression"]:
        config = spec.pipeline.models[-1].nonMaximumSuppression
        labels = list(config.stringClassLabels.vector)
        confidence = next(o for o in spec.pipeline.models[-1].description.output if o.name == CONFIDENCE)
        upper = confidence.type.multiArrayType.shapeRange.sizeRanges[0].upperBound
        nms = CoreMLNMS(
            confidence_threshold=config.confidenceThreshold,
            iou_threshold=config.iouThreshold,
            max_detections=int(upper),
            per_class=config.pickTop.perClass,
            classes=sum(not label.startswith("unused_") for label in labels),
            confidence_columns=len(labels),
        )
        names = {
            "confidence_in": config.confidenceInputFeatureName,
            "coordinates_in": config.coordinatesInputFeatureName,
            "confidence_out": config.confidenceOutputFeatureName,
            "coordinates_out": config.coordinatesOutputFeatureName,
            "iou_input": config.iouThresholdInputFeatureName,
            "confidence_input": config.confidenceThresholdInputFeatureName,
        }
    scale, bias = _image_preprocessing(main)
    metadata = spec.description.metadata
    return PackageInfo(
        path=path,
        model_type=model_type,
        sub_models=sub_models,
        specification_versions=versions,
        inputs=[feature_of(d) for d in spec.description.input],
        outputs=[feature_of(d) for d in spec.description.output],
        program_outputs=[feature_of(d) for d in program_spec.description.output],
        labels=labels,
        classifier=classifier,
        predicted_feature=spec.description.predictedFeatureName or None,
        nms=nms,
        nms_names=names,
        image_scale=scale,
        image_bias=bias,
        op_counts=Counter(op.op_type for op in main.operations),
        weight_dtypes=_weight_dtypes(main),
        metadata=dict(metadata.userDefined),
        description=metadata.shortDescription,
        author=metadata.author,
        license=metadata.license,
        version=metadata.versionString,
        program=program,
        loaded_by_core_ml=loaded,
    )


def _const_value(var):
    return None if var.val is None else np.asarray(var.val, dtype=np.float64)


def _image_preprocessing(main) -> tuple[float | None, list[float]]:
    """The scale and bias Core ML applies to an image input: the `mul` and `add` the program starts with."""
    if len(main.inputs) != 1:
        return None, []
    var = next(iter(main.inputs.values()))
    scale, bias = 1.0, []
    for _ in range(3):  # at most: mul (scale), add (bias), in this order; a cast to fp16 may follow
        consumers = [op for op in var.child_ops if op.op_type in ("mul", "add")]
        if len(consumers) != 1:
            break
        op = consumers[0]
        other = op.inputs["y"] if op.inputs["x"] is var else op.inputs["x"]
        value = _const_value(other)
        if value is None:
            break
        if op.op_type == "mul":
            scale = float(value.reshape(-1)[0])
        else:
            bias = [float(v) for v in value.reshape(-1)]
        var = op.outputs[0]
    return scale, bias


def _weight_dtypes(main) -> set[str]:
    from coremltools.converters.mil.mil import types

    dtypes = set()
    for op in main.operations:
        if op.op_type in _WEIGHT_CONSUMERS:
            weight = op.inputs.get("weight") if "weight" in op.inputs else op.inputs.get("y")
            if weight is not None and weight.op is not None and weight.op.op_type != "cast":
                dtypes.add(types.builtin_to_string(weight.dtype))
    return dtypes


def dense_weights(info: PackageInfo) -> list[tuple[str, np.ndarray]]:
    """Every weight stored compressed in the package, expanded as Core ML expands it when it loads the model."""
    compressed = {op for ops in COMPRESSED_OPS.values() for op in ops}
    result = []
    for op in info.program.functions["main"].operations:
        if op.op_type in compressed:
            result.append((op.name, np.asarray(op.materialized_val_inference(), dtype=np.float32)))
    return result


def compressed_count(info: PackageInfo, mode: str) -> int:
    return sum(info.op_counts[op] for op in COMPRESSED_OPS.get(mode, ()))


# --------------------------------------------------------------------------- checking


@dataclass
class Expected:
    """What the build asked for; `structural_checks` compares a package with it."""

    input_name: str
    input_shape: list[int]  # the model's input, as traced
    image: ImageInput | None
    labels: list[str]  # a classifier's or a detector's class labels; [] for neither
    classifier: bool
    nms: NMSParams | None  # a detector pipeline
    output_names: list[str]  # a plain model's outputs
    deployment_target: str
    compute_precision: str  # fp16 or fp32
    weights_mode: str  # fp16, fp32, int8-linear, palettized
    source_sha256: str
    edgectl_version: str


def _check(name: str, passed: bool, detail: str) -> CoreMLCheck:
    return CoreMLCheck(name=name, passed=bool(passed), detail=detail)


def structural_checks(info: PackageInfo, expected: Expected) -> list[CoreMLCheck]:
    """Every structural check of `info` against `expected`; each says what it found."""
    ct = import_coremltools()
    checks = [
        _check(
            "loads back from disk",
            True,
            "spec, program and weights read back"
            + (
                " and compiled by Core ML"
                if info.loaded_by_core_ml
                else " (Core ML itself loads models on macOS only)"
            ),
        )
    ]
    detector = expected.nms is not None
    wanted_type = ["mlProgram", "nonMaximumSuppression"] if detector else []
    type_ok = info.model_type == ("pipeline" if detector else "mlProgram") and info.sub_models == wanted_type
    checks.append(_check("model type", type_ok, f"{info.model_type} {info.sub_models or ''}".strip()))
    target = getattr(ct.target, expected.deployment_target)
    checks.append(
        _check(
            "deployment target",
            max(info.specification_versions) <= target.value,
            f"specification versions {sorted(set(info.specification_versions))}, "
            f"{expected.deployment_target} takes up to {target.value}",
        )
    )
    checks += _input_checks(info, expected)
    checks.append(_output_check(info, expected))
    checks.append(_labels_check(info, expected))
    if detector:
        checks.append(_nms_check(info, expected))
    checks.append(_weights_check(info, expected))
    sha = info.metadata.get(META_SOURCE_SHA256)
    version = info.metadata.get(META_EDGECTL)
    checks.append(
        _check(
            "metadata",
            sha == expected.source_sha256 and version == expected.edgectl_version and bool(info.description),
            f"source sha256 {str(sha)[:12]}…, edgectl {version}, description {'set' if info.description else 'missing'}",
        )
    )
    return checks


def _input_checks(info: PackageInfo, expected: Expected) -> list[CoreMLCheck]:
    first = info.inputs[0] if info.inputs else None
    names = [f.name for f in info.inputs]
    extra = [IOU_INPUT, CONFIDENCE_INPUT] if expected.nms is not None else []
    checks = [
        _check("input name", names == [expected.input_name, *extra], f"inputs {names}"),
    ]
    image = expected.image
    if image is not None:
        channels = image.channels
        height, width = image.height_width
        want = [channels, height, width]
        ok_type = first is not None and first.kind == "image" and first.color == image.color
        ok_shape = first is not None and first.shape == want
        checks.append(
            _check("input type", ok_type, f"{first.kind if first else None} {first.color if first else ''}")
        )
        checks.append(_check("input shape", ok_shape, f"{first.shape if first else None}, expected {want}"))
        scale_ok = info.image_scale is not None and np.isclose(
            info.image_scale, image.scale, rtol=_SCALE_RTOL
        )
        bias = info.image_bias or [0.0] * len(image.bias)
        bias_ok = len(bias) in (1, len(image.bias)) and np.allclose(
            np.broadcast_to(bias, len(image.bias)), image.bias, atol=1e-6
        )
        checks.append(
            _check(
                "image scale and bias",
                scale_ok and bias_ok,
                f"scale {info.image_scale}, bias {bias}; expected {image.scale}, {list(image.bias)}",
            )
        )
    else:
        ok_type = first is not None and first.kind == "multiarray" and first.dtype == "float32"
        ok_shape = first is not None and first.shape == list(expected.input_shape)
        checks.append(
            _check("input type", ok_type, f"{first.kind if first else None} {first.dtype if first else ''}")
        )
        checks.append(
            _check(
                "input shape", ok_shape, f"{first.shape if first else None}, expected {expected.input_shape}"
            )
        )
    if extra:
        doubles = [f for f in info.inputs[1:] if f.kind == "double" and f.optional]
        checks.append(
            _check(
                "threshold inputs",
                len(doubles) == 2,
                f"{[(f.name, f.kind, f.optional) for f in info.inputs[1:]]}",
            )
        )
    return checks


def _output_check(info: PackageInfo, expected: Expected) -> CoreMLCheck:
    outputs = {f.name: f for f in info.outputs}
    found = [f"{f.name}: {f.kind} {f.dtype or ''} {f.shape}".strip() for f in info.outputs]
    if expected.nms is not None:
        columns = padded_columns(len(expected.labels))
        raw = {f.name: f for f in info.program_outputs}
        ok = (
            set(outputs) == {CONFIDENCE, COORDINATES}
            and outputs[CONFIDENCE].shape == [-1, columns]
            and outputs[COORDINATES].shape == [-1, 4]
            and set(raw) == {RAW_CONFIDENCE, RAW_COORDINATES}
            and all(f.dtype == "float32" for f in [*raw.values(), *outputs.values()])
            and raw[RAW_CONFIDENCE].shape[1:] == [columns]
            and raw[RAW_COORDINATES].shape[1:] == [4]
        )
        found += [f"(program) {f.name}: {f.dtype} {f.shape}" for f in info.program_outputs]
    elif expected.classifier:
        ok = (
            info.classifier
            and info.predicted_feature == CLASS_LABEL
            and outputs.get(CLASS_LABEL) is not None
            and outputs[CLASS_LABEL].kind == "string"
            and any(f.kind == "dictionary" for f in info.outputs)
        )
    else:
        ok = [f.name for f in info.outputs] == expected.output_names and all(
            f.kind == "multiarray" and f.dtype == "float32" for f in info.outputs
        )
    return _check("outputs", ok, "; ".join(found))


def _labels_check(info: PackageInfo, expected: Expected) -> CoreMLCheck:
    if expected.nms is not None:
        real = info.labels[: len(expected.labels)]
        padding = info.labels[len(expected.labels) :]
        ok = real == expected.labels and all(label.startswith("unused_") for label in padding)
        return _check("labels", ok, f"{len(real)} class labels + {len(padding)} padding in the NMS stage")
    if expected.classifier:
        ok = info.classifier and info.labels == expected.labels
        return _check(
            "labels", ok, f"classifier labels {info.labels[:5]}{'…' if len(info.labels) > 5 else ''}"
        )
    return _check(
        "labels",
        not info.labels,
        "no labels expected" + (f", found {len(info.labels)}" if info.labels else ""),
    )


def _nms_check(info: PackageInfo, expected: Expected) -> CoreMLCheck:
    params = expected.nms
    nms = info.nms
    names = info.nms_names
    ok = (
        nms is not None
        and np.isclose(nms.confidence_threshold, params.conf_threshold)
        and np.isclose(nms.iou_threshold, params.iou_threshold)
        and nms.per_class
        and nms.classes == len(expected.labels)
        and names.get("confidence_in") == RAW_CONFIDENCE
        and names.get("coordinates_in") == RAW_COORDINATES
        and names.get("confidence_out") == CONFIDENCE
        and names.get("coordinates_out") == COORDINATES
        and names.get("iou_input") == IOU_INPUT
        and names.get("confidence_input") == CONFIDENCE_INPUT
    )
    detail = json.dumps({**(nms.model_dump() if nms else {}), **names}, sort_keys=True)
    return _check("nms", ok, detail)


def _weights_check(info: PackageInfo, expected: Expected) -> CoreMLCheck:
    mode = expected.weights_mode
    want_dtype = "fp32" if expected.compute_precision == "fp32" else "fp16"
    compressed = compressed_count(info, mode)
    if mode in COMPRESSED_OPS:
        ok = compressed > 0 and info.weight_dtypes <= {want_dtype}
    else:
        ok = compressed_count(info, "int8-linear") + compressed_count(info, "palettized") == 0 and (
            info.weight_dtypes == {want_dtype}
        )
    return _check(
        "weights",
        ok,
        f"{mode}: {compressed} compressed tensors, weights feed compute as {sorted(info.weight_dtypes)}",
    )


def failed(checks: list[CoreMLCheck]) -> list[CoreMLCheck]:
    return [c for c in checks if not c.passed]
