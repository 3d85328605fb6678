"""What a Core ML package on disk says about itself, read back anywhere (Core ML predicts only on macOS).

Its inputs and outputs with their types and shapes, the class labels, the deployment target, the NMS
stage of a detector, how Core ML prepares the image (the program's first ops), how the weights are
stored, and the metadata: `read_package` reads them, program and weights included, into a
`PackageInfo` that the structural checks (`checks`) and the host runner (`runner`) use.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebase.deps import import_coremltools
from edgebundle.manifest import CoreMLFeature, CoreMLNMS
from toolchain.backends.coreml.detector import (
    CONFIDENCE,
)
from toolchain.backends.coreml.model import (
    COMPRESSED_OPS,
)
from toolchain.errors import EdgectlError

_ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "double", "INT32": "int32"}
_COLORS = {"GRAYSCALE": "GRAY", "RGB": "RGB", "BGR": "BGR", "GRAYSCALE_FLOAT16": "GRAY"}
_WEIGHT_CONSUMERS = ("conv", "conv_transpose", "linear", "matmul")


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
