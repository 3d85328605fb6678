"""`edgectl export android`: a verified LiteRT bundle as the files an Android app project takes.

    OUT/
      assets/          every artifact of the bundle (.tflite for LiteRT, .ort for ONNX Runtime Mobile)
                       and labels.txt: copy into app/src/main/assets/
      model-info.json  exact tensors (shape, dtype, layout, scale and zero point), normalization, labels,
                       per-artifact delegates, validation and benchmark, the size check, file hashes
      ModelRunner.kt   LiteRT Interpreter code with this model's shapes, types and normalization filled in
      README.md        what each file is for, and the Gradle lines

Each .tflite also carries model-info in the model's own metadata table, under
`edgectl_model_info`, so a model file that travels alone still says how to
feed it. That embedded copy leaves out `files` and `size`: a file cannot hold
its own hash. The hashes and sizes in model-info.json are of the files as
written, metadata included.

How the metadata goes in is `mobile_export.tflite_metadata`; the Kotlin is
`mobile_export.android_kotlin`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgebundle import sha256_file
from edgebundle.manifest import Artifact, Manifest
from mobile_export.common import (
    MB,
    BenchmarkSummary,
    BundleInfo,
    ExportedFile,
    Normalization,
    SizeCheck,
    TensorInfo,
    UserInputError,
    ValidationSummary,
    app_download_limit_mb,
    benchmark_summary,
    bundle_info,
    check_out_dir,
    check_size,
    normalization,
    open_bundle,
    require_runtime,
    staged_output,
    tensor_info,
    validation_summary,
)
from mobile_export.tflite_metadata import METADATA_NAME

MODEL_INFO_SCHEMA = "edgectl.android-model-info/1"
RUNTIMES = ("tflite",)
COMMAND = "edgectl export android"
ASSETS = "assets"
MODEL_INFO = "model-info.json"
SNIPPET = "ModelRunner.kt"
README = "README.md"
LABELS = "labels.txt"
DEFAULT_PACKAGE = "com.example.model"
# The Interpreter API line of LiteRT on Google Maven (2.x moves to the CompiledModel API).
LITERT_VERSION = "1.4.1"
_RUNTIME_OF_FORMAT = {"tflite": "litert", "ort": "onnxruntime-mobile"}
_PACKAGE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AndroidArtifact(_Model):
    path: str = Field(description="Relative to the output folder, under assets/.")
    role: str = Field(
        description="model: the primary; gpu: fp16 for the GPU delegate; ort: ONNX Runtime Mobile."
    )
    format: str
    precision: str
    runtime: str = Field(description="litert or onnxruntime-mobile.")
    delegates: list[str] = Field(description="Where it runs well: xnnpack (CPU), nnapi, gpu; cpu for ORT.")
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    validation: ValidationSummary | None = None
    benchmark: BenchmarkSummary | None = Field(default=None, description="Measured on the build host.")
    metadata_embedded: bool = Field(description=f"model-info is in the file's metadata as {METADATA_NAME!r}.")


class AndroidModelInfo(_Model):
    """model-info.json; the copy embedded in each .tflite has no `files` and no `size`."""

    schema_id: Literal["edgectl.android-model-info/1"] = Field(default=MODEL_INFO_SCHEMA, alias="schema")
    bundle: BundleInfo
    task: str
    labels: list[str]
    labels_file: str | None = Field(description="Relative to the output folder; None without labels.")
    normalization: Normalization
    artifacts: list[AndroidArtifact]
    files: list[ExportedFile] = Field(default_factory=list, description="Every asset as written.")
    size: SizeCheck | None = None

    def document(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2) + "\n"

    def embedded(self) -> bytes:
        core = self.model_dump(mode="json", by_alias=True, exclude={"files", "size"})
        return json.dumps(core, separators=(",", ":")).encode()


class ExportResult(_Model):
    """What `--json` prints (under schema edgectl.export/1)."""

    platform: Literal["android"] = "android"
    bundle: str
    name: str
    version: int
    target: str
    out: str
    model_info: str = MODEL_INFO
    snippet: str = SNIPPET
    files: list[ExportedFile] = Field(description="Every file written, relative to out.")
    size: SizeCheck
    warnings: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the export


def export_android(
    bundle: Path,
    out: Path,
    public_key: Path | None,
    *,
    force: bool = False,
    size_limit_mb: float | None = None,
    package: str = DEFAULT_PACKAGE,
) -> ExportResult:
    """Verify `bundle`, then write assets, model-info.json, ModelRunner.kt and README.md to `out` at once."""
    from mobile_export.android_kotlin import kotlin_runner
    from mobile_export.tflite_metadata import embed_metadata, metadata_tools_available

    if not _PACKAGE_RE.match(package):
        raise UserInputError(
            f"--package {package!r} is not a Kotlin package name", hint="e.g. com.example.app"
        )
    if size_limit_mb is not None and size_limit_mb <= 0:
        raise UserInputError(f"--size-limit-mb must be positive, got {size_limit_mb:g}", hint="e.g. 150")
    check_out_dir(Path(out), force)
    with open_bundle(bundle, public_key) as verified:
        manifest = verified.manifest
        require_runtime(
            manifest,
            RUNTIMES,
            COMMAND,
            "build a LiteRT bundle first: edgectl build MODEL --target android",
        )
        limit_mb = size_limit_mb if size_limit_mb is not None else app_download_limit_mb(manifest.target)
        has_labels = (verified.root / LABELS).is_file() or bool(manifest.postprocessing.labels)
        raw = sum(f.size for f in manifest.files if f.path in {a.path for a in manifest.artifacts} | {LABELS})
        _refuse_over(check_size(raw, limit_mb), manifest.target)  # before any work on a hopeless export
        warnings: list[str] = []
        embed = metadata_tools_available()
        if not embed:
            warnings.append(
                "ai-edge-litert is not installed: model-info is not embedded in the .tflite files "
                "(install it with: pip install 'edgectl[tflite]')"
            )
        info = model_info(manifest, has_labels=has_labels, embed=embed)
        payload = info.embedded()
        with staged_output(Path(out), force) as work:
            assets = work / ASSETS
            assets.mkdir()
            for artifact in manifest.artifacts:
                source, dest = verified.root / artifact.path, assets / artifact.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                if artifact.format == "tflite" and embed:
                    dest.write_bytes(embed_metadata(source.read_bytes(), payload))
                else:
                    shutil.copyfile(source, dest)
            if (verified.root / LABELS).is_file():
                shutil.copyfile(verified.root / LABELS, assets / LABELS)
            elif manifest.postprocessing.labels:
                (assets / LABELS).write_text("\n".join(manifest.postprocessing.labels) + "\n")
            files = [_exported(work, path) for path in sorted(assets.rglob("*")) if path.is_file()]
            size = check_size(sum(f.size for f in files), limit_mb)
            _refuse_over(size, manifest.target)
            if size.status == "warn":
                warnings.append(size.message(manifest.target))
            info = info.model_copy(update={"files": files, "size": size})
            (work / MODEL_INFO).write_text(info.document())
            (work / SNIPPET).write_text(kotlin_runner(manifest, info, package))
            (work / README).write_text(readme(info))
            written = [_exported(work, path) for path in sorted(work.rglob("*")) if path.is_file()]
    return ExportResult(
        bundle=str(bundle),
        name=manifest.name,
        version=manifest.version,
        target=manifest.target,
        out=str(out),
        files=written,
        size=size,
        warnings=warnings,
    )


def _refuse_over(size: SizeCheck, target: str) -> None:
    if size.status == "over":
        raise UserInputError(
            size.message(target),
            hint="build at a lower precision, ship the model outside the base download (Play Asset Delivery), "
            "or pass --size-limit-mb",
        )


def _exported(root: Path, path: Path) -> ExportedFile:
    return ExportedFile(
        path=path.relative_to(root).as_posix(), size=path.stat().st_size, sha256=sha256_file(path)
    )


# --------------------------------------------------------------------------- model-info


def model_info(manifest: Manifest, *, has_labels: bool, embed: bool) -> AndroidModelInfo:
    """model-info for `manifest`, without files and size (those need the written files)."""
    delegates = _profile_delegates(manifest.target)
    image_layout = manifest.preprocessing.layout if manifest.preprocessing.input == "image" else None
    artifacts = []
    for index, artifact in enumerate(manifest.artifacts):
        validation = artifact.validation or (manifest.validation if index == 0 else None)
        benchmark = artifact.benchmark or (manifest.benchmark if index == 0 else None)
        artifacts.append(
            AndroidArtifact(
                path=f"{ASSETS}/{artifact.path}",
                role=artifact.role,
                format=artifact.format,
                precision=artifact.precision,
                runtime=_RUNTIME_OF_FORMAT.get(artifact.format, artifact.format),
                delegates=_delegates_for(artifact, delegates),
                inputs=[tensor_info(t, image_layout) for t in artifact.inputs],
                outputs=[tensor_info(t) for t in artifact.outputs],
                validation=validation_summary(validation),
                benchmark=benchmark_summary(benchmark),
                metadata_embedded=embed and artifact.format == "tflite",
            )
        )
    return AndroidModelInfo(
        bundle=bundle_info(manifest),
        task=manifest.postprocessing.task,
        labels=list(manifest.postprocessing.labels),
        labels_file=f"{ASSETS}/{LABELS}" if has_labels else None,
        normalization=normalization(manifest.preprocessing),
        artifacts=artifacts,
    )


def _profile_delegates(target: str) -> list[str]:
    """The delegates the target profile names; XNNPACK when it names none (or is not a TFLite profile)."""
    from targets import UnknownTargetError, get_profile

    try:
        options = get_profile(target).runtime_options()
    except UnknownTargetError:
        return ["xnnpack"]
    return list(getattr(options, "delegates", None) or ["xnnpack"])


def _delegates_for(artifact: Artifact, available: list[str]) -> list[str]:
    if artifact.format != "tflite":
        return ["cpu"]
    if artifact.precision == "int8":
        wanted = ("xnnpack", "nnapi")  # the GPU delegate dequantizes INT8: no gain there
    elif artifact.role == "gpu":
        wanted = ("gpu",)
    else:
        wanted = ("xnnpack", "gpu")
    return [d for d in wanted if d in available] or ["xnnpack"]


def profile_threads(target: str) -> int:
    from targets import UnknownTargetError, get_profile

    try:
        return get_profile(target).threads or 4
    except UnknownTargetError:
        return 4


# --------------------------------------------------------------------------- TFLite metadata


def read_model_info(path: Path) -> AndroidModelInfo | None:
    """The model-info embedded in an exported .tflite file, None when it has none."""
    from mobile_export.tflite_metadata import read_metadata

    payload = read_metadata(Path(path).read_bytes())
    return None if payload is None else AndroidModelInfo.model_validate_json(payload)


# --------------------------------------------------------------------------- README


def readme(info: AndroidModelInfo) -> str:
    """README.md of the output folder: one line per file, the Gradle lines, the size check."""
    bundle = info.bundle
    lines = [
        f"# {bundle.name} v{bundle.version} for Android",
        "",
        f"Exported by `{COMMAND}` from the signed bundle for target `{bundle.target}` "
        f"(source {bundle.source_filename}, sha256 {bundle.source_sha256[:16]}…).",
        "",
        "| file | what it is |",
        "|---|---|",
    ]
    for artifact in info.artifacts:
        shape = " ".join(f"{t.shape} {t.dtype}" for t in artifact.inputs)
        lines.append(
            f"| `{artifact.path}` | {artifact.role}: {artifact.precision} {artifact.format} for "
            f"{artifact.runtime} ({', '.join(artifact.delegates)}); input {shape} |"
        )
    if info.labels_file:
        lines.append(f"| `{info.labels_file}` | {len(info.labels)} class labels, one per line |")
    lines += [
        f"| `{MODEL_INFO}` | tensors, normalization, labels, validation, benchmark, sizes, sha256 "
        f"(schema {MODEL_INFO_SCHEMA}); also embedded in each .tflite as metadata `{METADATA_NAME}` |",
        f"| `{SNIPPET}` | LiteRT Interpreter code with this model's shapes and normalization |",
        "",
        "## In the app",
        "",
        "1. Copy `assets/` into `app/src/main/assets/` (leave out the files the app does not use).",
        "2. Add to `app/build.gradle.kts`:",
        "",
        "```kotlin",
        "dependencies {",
        f'    implementation("com.google.ai.edge.litert:litert:{LITERT_VERSION}")',
        f'    implementation("com.google.ai.edge.litert:litert-gpu:{LITERT_VERSION}")      // GPU delegate',
        f'    implementation("com.google.ai.edge.litert:litert-gpu-api:{LITERT_VERSION}")',
        "}",
        'android { androidResources { noCompress += listOf("tflite") } }',
        "```",
        "",
        f"3. Put `{SNIPPET}` in your sources, set its package, and call "
        "`ModelRunner(context).use { it.run(...) }`.",
    ]
    if any("nnapi" in a.delegates for a in info.artifacts):
        lines += [
            "",
            "NNAPI (`org.tensorflow.lite.nnapi.NnApiDelegate`) runs the INT8 model on Android 8.1 to 14; "
            "Android 15 deprecates it, so keep the CPU (XNNPACK) path as the default.",
        ]
    if any(a.runtime == "onnxruntime-mobile" for a in info.artifacts):
        lines += [
            "",
            "The `.ort` file is for ONNX Runtime Mobile (`com.microsoft.onnxruntime:onnxruntime-android`, "
            "`OrtEnvironment.getEnvironment().createSession(bytes)`); its input layout is in model-info.json.",
        ]
    if info.size is not None:
        size = info.size
        lines += [
            "",
            f"Assets: {size.total_bytes / MB:.2f} MB, {size.fraction:.1%} of the {size.limit_mb:g} MB app "
            f"download limit ({size.status}).",
        ]
    return "\n".join(lines) + "\n"
