"""The Swift file `edgectl export ios` writes: Vision code for image models, the generated class's call otherwise.

The Swift itself is template files (`mobile_export/templates/ios/`); this module picks a classifier,
a detector (with its letterbox and box mapping) or a tensor call, and fills in the model's class,
input size, thresholds and compute units.
"""

from __future__ import annotations

from edgebundle.manifest import Manifest
from mobile_export.common import template
from mobile_export.ios import SWIFT_UNITS, IOSModelInfo


def swift_file_name(info: IOSModelInfo) -> str:
    return f"{info.class_name}+Vision.swift" if info.image is not None else f"{info.class_name}+Run.swift"


def _swift_number(value: float) -> str:
    text = f"{value:.6g}"
    return text if any(c in text for c in ".e") else f"{text}.0"


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def swift_snippet(manifest: Manifest, info: IOSModelInfo) -> str:
    """Swift for this model: Vision for image models (classifier or detector), the generated class otherwise."""
    values = {
        "CLASS": info.class_name,
        "NAME": manifest.name,
        "VERSION": str(manifest.version),
        "TARGET": manifest.target,
        "UNITS": SWIFT_UNITS.get(info.compute_units, "all"),
        "INPUT": info.inputs[0].name,
        "FILE": swift_file_name(info),
    }
    imports = ["CoreML"] if info.image is None else ["CoreImage", "CoreML", "Vision"]
    header = _fill(_SWIFT_HEADER, {**values, "IMPORTS": "\n".join(f"import {m}" for m in imports)})
    if info.image is None:
        first = info.inputs[0]
        output = info.outputs[0].name
        count = 1
        for dim in first.shape:
            count *= dim
        values.update(
            {"SHAPE": ", ".join(str(d) for d in first.shape), "COUNT": str(count), "OUTPUT": output}
        )
        return header + _fill(_SWIFT_TENSOR, values)
    image = info.image
    values.update(
        {
            "WIDTH": str(image.width),
            "HEIGHT": str(image.height),
            "FILL": str(image.letterbox_fill),
            "COLOR": image.color,
        }
    )
    letterbox = image.resize_mode == "letterbox"
    body = _fill(_SWIFT_PREPARE_LETTERBOX if letterbox else _SWIFT_PREPARE_STRETCH, values)
    if info.thresholds is not None:
        values.update(
            {"CONF": _swift_number(info.thresholds.confidence), "IOU": _swift_number(info.thresholds.iou)}
        )
        return (
            header
            + _fill(_SWIFT_DETECTOR, values).replace("@PREPARE@", body)
            + _fill(_SWIFT_THRESHOLDS, values)
        )
    return header + _fill(_SWIFT_CLASSIFIER, values).replace("@PREPARE@", body)


_SWIFT_HEADER = template("ios/header.swift")

_SWIFT_PREPARE_STRETCH = template("ios/prepare_stretch.swift")

_SWIFT_PREPARE_LETTERBOX = template("ios/prepare_letterbox.swift")

_SWIFT_RENDER = template("ios/render.swift")

_SWIFT_CLASSIFIER = template("ios/classifier.swift") + _SWIFT_RENDER + "}\n"

_SWIFT_DETECTOR = template("ios/detector.swift") + _SWIFT_RENDER + "}\n"

_SWIFT_THRESHOLDS = template("ios/thresholds.swift")

_SWIFT_TENSOR = template("ios/tensor.swift")
