"""`edgectl export ios`: a verified Core ML bundle as the files an Xcode project takes.

    OUT/
      <Class>.mlpackage    the model: drag it into Xcode, which compiles it and generates the class <Class>
      model-info.json      features (names, types, shapes), labels, how Core ML prepares the image,
                           thresholds, deployment target, compute units, weights, validation and checks,
                           the size check, file hashes
      <Class>+Vision.swift Vision code for image models (a classifier or a detector with its letterbox and
                           box mapping), or the generated class's call for tensor models
      README.md            what each file is for, the Xcode steps, the size check

The exported package is the bundle's, with its metadata stamped: version (the bundle's), author and
license (--author, --license), the bundle's name, target and key id. Only the model's description
changes, never its program or weights; the hashes in model-info.json are of the files as written.
The size check compares the package with the guidance for on-demand download (the profile's
`on_demand_guidance_mb`): above it, deliver the model as an on-demand resource or a background asset.
The stamping is `mobile_export.coreml_metadata`; the Swift is `mobile_export.ios_swift`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgebundle import sha256_file
from edgebundle.manifest import CoreMLCheck, CoreMLFeature, CoreMLWeights, Manifest
from mobile_export.common import (
    BundleInfo,
    ExportedFile,
    SizeCheck,
    UserInputError,
    ValidationSummary,
    bundle_info,
    check_out_dir,
    check_size,
    open_bundle,
    require_runtime,
    staged_output,
    validation_summary,
)

MODEL_INFO_SCHEMA = "edgectl.ios-model-info/1"
RUNTIMES = ("coreml",)
COMMAND = "edgectl export ios"
MODEL_INFO = "model-info.json"
README = "README.md"
DEFAULT_ON_DEMAND_MB = 100
_CLASS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SWIFT_KEYWORDS = {
    "class",
    "struct",
    "enum",
    "protocol",
    "func",
    "var",
    "let",
    "import",
    "self",
    "Self",
    "Type",
    "Any",
}
SWIFT_UNITS = {
    "ALL": "all",
    "CPU_AND_NE": "cpuAndNeuralEngine",
    "CPU_AND_GPU": "cpuAndGPU",
    "CPU_ONLY": "cpuOnly",
}
# Metadata keys the export stamps into the package (besides version, author and license).
META_BUNDLE = "edgectl.bundle"
META_KEY_ID = "edgectl.key_id"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagePreparation(_Model):
    """How a camera frame becomes the model's input on the phone."""

    color: str = Field(
        description="The channel order Core ML feeds the model (it converts the frame itself)."
    )
    height: int
    width: int
    resize_mode: str = Field(description="stretch or letterbox, as the model was validated.")
    letterbox_fill: int
    crop_and_scale: str = Field(description="The VNImageCropAndScaleOption the Swift file uses.")
    scale: float = Field(description="Core ML computes scale * pixel + bias[c] inside the model.")
    bias: list[float]
    std_in_model: list[float] = Field(
        default_factory=list, description="Then divides by std[c], in the model."
    )


class Thresholds(_Model):
    confidence: float
    iou: float
    max_detections: int
    confidence_input: str
    iou_input: str
    classes: int
    confidence_columns: int = Field(
        description="Columns of the confidence output: classes, then zero padding."
    )
    score: str = Field(description="Where a detection's score is.")


class Stamped(_Model):
    version: str
    author: str
    license: str


class IOSModelInfo(_Model):
    schema_id: Literal["edgectl.ios-model-info/1"] = Field(default=MODEL_INFO_SCHEMA, alias="schema")
    bundle: BundleInfo
    package: str = Field(description="The .mlpackage, relative to the output folder.")
    class_name: str = Field(description="The Swift class Xcode generates from the package.")
    task: str
    labels: list[str]
    inputs: list[CoreMLFeature]
    outputs: list[CoreMLFeature]
    image: ImagePreparation | None
    thresholds: Thresholds | None
    deployment_target: str
    compute_units: str
    compute_precision: str
    weights: CoreMLWeights
    validation: ValidationSummary | None
    structural_checks: list[CoreMLCheck]
    numerical_check: str | None
    macos_predict: bool
    stamped: Stamped | None = Field(
        description="Metadata written into the exported package; None: not stamped."
    )
    files: list[ExportedFile] = Field(default_factory=list)
    size: SizeCheck | None = None

    def document(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2) + "\n"


class ExportResult(_Model):
    """What `--json` prints (under schema edgectl.export/1)."""

    platform: Literal["ios"] = "ios"
    bundle: str
    name: str
    version: int
    target: str
    out: str
    package: str
    model_info: str = MODEL_INFO
    snippet: str
    files: list[ExportedFile]
    size: SizeCheck
    warnings: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the export


def class_name_for(name: str) -> str:
    """A Swift type name from a bundle name: `digits` -> `Digits`, `yolo11n-shapes` -> `Yolo11nShapes`."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    candidate = "".join(p[0].upper() + p[1:] for p in parts) or "Model"
    return candidate if not candidate[0].isdigit() else f"Model{candidate}"


def export_ios(
    bundle: Path,
    out: Path,
    public_key: Path | None,
    *,
    force: bool = False,
    size_limit_mb: float | None = None,
    class_name: str | None = None,
    author: str = "",
    license_text: str = "",
) -> ExportResult:
    """Verify `bundle`, then write the package, model-info.json, the Swift file and README.md to `out` at once."""
    from mobile_export.coreml_metadata import stamp_metadata
    from mobile_export.ios_swift import swift_file_name, swift_snippet

    if class_name is not None and (not _CLASS_RE.match(class_name) or class_name in _SWIFT_KEYWORDS):
        raise UserInputError(
            f"--class-name {class_name!r} is not a Swift type name",
            hint="letters, digits and _, e.g. ShapesDetector",
        )
    if size_limit_mb is not None and size_limit_mb <= 0:
        raise UserInputError(f"--size-limit-mb must be positive, got {size_limit_mb:g}", hint="e.g. 100")
    check_out_dir(Path(out), force)
    with open_bundle(bundle, public_key) as verified:
        manifest = verified.manifest
        require_runtime(
            manifest, RUNTIMES, COMMAND, "build a Core ML bundle first: edgectl build MODEL --target ios"
        )
        if manifest.coreml is None:
            raise UserInputError(
                f"bundle {manifest.name} v{manifest.version} has no coreml section in its manifest",
                hint="rebuild it with this edgectl: edgectl build MODEL --target ios",
            )
        name = class_name or class_name_for(manifest.name)
        limit_mb = size_limit_mb if size_limit_mb is not None else on_demand_guidance_mb(manifest.target)
        artifact = manifest.artifacts[0]
        warnings: list[str] = []
        info = model_info(manifest, name)
        with staged_output(Path(out), force) as work:
            package = work / info.package
            shutil.copytree(verified.root / artifact.path, package)
            stamped = stamp_metadata(
                package,
                version=str(manifest.version),
                author=author,
                license_text=license_text,
                extra={
                    META_BUNDLE: f"{manifest.name} v{manifest.version} ({manifest.target})",
                    META_KEY_ID: manifest.key_id or "",
                },
            )
            if stamped is None:
                warnings.append(
                    "coremltools is not installed: the package's metadata is not stamped "
                    "(install it with: pip install 'edgectl[coreml]')"
                )
            files = [_exported(work, p) for p in sorted(package.rglob("*")) if p.is_file()]
            size = check_size(sum(f.size for f in files), limit_mb)
            if size.status != "ok":
                warnings.append(size_message(size))
            info = info.model_copy(update={"files": files, "size": size, "stamped": stamped})
            (work / MODEL_INFO).write_text(info.document())
            snippet = swift_file_name(info)
            (work / snippet).write_text(swift_snippet(manifest, info))
            (work / README).write_text(readme(info, snippet))
            written = [_exported(work, p) for p in sorted(work.rglob("*")) if p.is_file()]
    return ExportResult(
        bundle=str(bundle),
        name=manifest.name,
        version=manifest.version,
        target=manifest.target,
        out=str(out),
        package=info.package,
        snippet=snippet,
        files=written,
        size=size,
        warnings=warnings,
    )


def on_demand_guidance_mb(target: str) -> float:
    from targets import UnknownTargetError, get_profile

    try:
        return float(
            getattr(get_profile(target).runtime_options(), "on_demand_guidance_mb", DEFAULT_ON_DEMAND_MB)
        )
    except UnknownTargetError:
        return DEFAULT_ON_DEMAND_MB


def size_message(size: SizeCheck) -> str:
    share = (
        f"the package is {size.total_bytes / 2**20:.1f} MB, {size.fraction:.0%} of the {size.limit_mb:g} MB"
    )
    if size.status == "over":
        return (
            f"{share} guidance for models in the app bundle: deliver it as an on-demand resource or a "
            "background asset, or build smaller weights (--precision int8, --palettize 6)"
        )
    return f"{share} guidance for models in the app bundle"


def _exported(root: Path, path: Path) -> ExportedFile:
    return ExportedFile(
        path=path.relative_to(root).as_posix(), size=path.stat().st_size, sha256=sha256_file(path)
    )


# --------------------------------------------------------------------------- model-info


def model_info(manifest: Manifest, class_name: str) -> IOSModelInfo:
    """model-info for `manifest`, without files, size and stamping (those need the written files)."""
    coreml = manifest.coreml
    pre = manifest.preprocessing
    image_feature = next((f for f in coreml.inputs if f.kind == "image"), None)
    image = None
    if image_feature is not None:
        _, height, width = image_feature.shape
        image = ImagePreparation(
            color=image_feature.color or pre.color,
            height=height,
            width=width,
            resize_mode=pre.resize_mode,
            letterbox_fill=pre.letterbox_fill,
            crop_and_scale="scaleFill (on an already letterboxed frame)"
            if pre.resize_mode == "letterbox"
            else "scaleFill",
            scale=coreml.image_scale if coreml.image_scale is not None else pre.scale,
            bias=list(coreml.image_bias),
            std_in_model=list(coreml.std_in_model),
        )
    thresholds = None
    if coreml.nms is not None:
        nms = coreml.nms
        thresholds = Thresholds(
            confidence=nms.confidence_threshold,
            iou=nms.iou_threshold,
            max_detections=nms.max_detections,
            confidence_input="confidenceThreshold",
            iou_input="iouThreshold",
            classes=nms.classes,
            confidence_columns=nms.confidence_columns,
            score="VNRecognizedObjectObservation.confidence (the row's sum: only the best class has a score); "
            "labels[0].confidence is that label's share, always 1",
        )
    validation = manifest.artifacts[0].validation or manifest.validation
    return IOSModelInfo(
        bundle=bundle_info(manifest),
        package=f"{class_name}.mlpackage",
        class_name=class_name,
        task=manifest.postprocessing.task,
        labels=list(manifest.postprocessing.labels),
        inputs=list(coreml.inputs),
        outputs=list(coreml.outputs),
        image=image,
        thresholds=thresholds,
        deployment_target=coreml.deployment_target,
        compute_units=coreml.compute_units,
        compute_precision=coreml.compute_precision,
        weights=coreml.weights,
        validation=validation_summary(validation),
        structural_checks=list(coreml.structural_checks),
        numerical_check=coreml.numerical_check,
        macos_predict=coreml.macos_predict,
        stamped=None,
    )


# --------------------------------------------------------------------------- README


def readme(info: IOSModelInfo, snippet: str) -> str:
    bundle = info.bundle
    lines = [
        f"# {bundle.name} v{bundle.version} for iOS",
        "",
        f"Exported by `{COMMAND}` from the signed bundle for target `{bundle.target}` "
        f"(source {bundle.source_filename}, sha256 {bundle.source_sha256[:16]}…).",
        "",
        "| file | what it is |",
        "|---|---|",
        f"| `{info.package}` | Core ML package ({info.weights.summary}); iOS {info.deployment_target[3:]}+ |",
        f"| `{MODEL_INFO}` | features, labels, image preparation, thresholds, checks, sizes, sha256 "
        f"(schema {MODEL_INFO_SCHEMA}) |",
        f"| `{snippet}` | Swift that runs the model{' through Vision' if info.image else ''} |",
        "",
        "## In Xcode",
        "",
        f"1. Drag `{info.package}` into the project navigator and tick your app target. Xcode compiles it at "
        f"build time and generates the class `{info.class_name}`.",
        f"2. Set the app's deployment target to iOS {info.deployment_target[3:]} or later.",
        f"3. Add `{snippet}` to the target. Compute units: `.{SWIFT_UNITS.get(info.compute_units, 'all')}` by default.",
    ]
    if info.thresholds is not None:
        t = info.thresholds
        lines += [
            "",
            f"The package ends in Core ML's NMS (confidence {t.confidence:g}, IoU {t.iou:g}, at most "
            f"{t.max_detections} boxes; `{t.confidence_input}` and `{t.iou_input}` are optional inputs). "
            f"A detection's score is `VNRecognizedObjectObservation.confidence`; `labels[0].confidence` is always 1. "
            f"The confidence output has {t.confidence_columns} columns: the {t.classes} classes, then padding.",
        ]
    if info.image is not None and info.image.resize_mode == "letterbox":
        lines += [
            "",
            "The model was trained on letterboxed images: the Swift file letterboxes each frame itself and maps "
            "the boxes back, rather than rely on Vision's crop and scale options.",
        ]
    if info.size is not None:
        size = info.size
        lines += [
            "",
            f"Package: {size.total_bytes / 2**20:.2f} MB, {size.fraction:.1%} of the {size.limit_mb:g} MB guidance "
            f"for models in the app bundle ({size.status}).",
        ]
    return "\n".join(lines) + "\n"
