"""The structural checks a Core ML package must pass, run anywhere (Core ML predicts only on macOS).

`structural_checks` compares the package as read back from disk (`package.read_package`) with what
the build asked for and returns one result per check, so a test can show that a broken package fails
the check that concerns it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edgebase.deps import import_coremltools
from edgebundle.manifest import CoreMLCheck, NMSParams
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
from toolchain.backends.coreml.package import PackageInfo, compressed_count

# Core ML computes the image input in float; these are the tolerances of its scale and bias (fp32 consts).
_SCALE_RTOL = 1e-5


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
