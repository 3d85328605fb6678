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

The metadata goes in by rewriting the flatbuffer with the schema's object API
(ai-edge-litert ships the generated schema), as TFLite's own flatbuffer tools
do; tflite-support's metadata writer is not used because it pins protobuf 3.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import textwrap
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
    template,
    tensor_info,
    validation_summary,
)

MODEL_INFO_SCHEMA = "edgectl.android-model-info/1"
METADATA_NAME = "edgectl_model_info"
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
        embed = _metadata_tools_available()
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


def _profile_threads(target: str) -> int:
    from targets import UnknownTargetError, get_profile

    try:
        return get_profile(target).threads or 4
    except UnknownTargetError:
        return 4


# --------------------------------------------------------------------------- TFLite metadata


def _metadata_tools_available() -> bool:
    from edgebase.deps import is_available

    return is_available("ai_edge_litert") and is_available("flatbuffers")


class _AlignedBuffer:
    """Packs a BufferT with its data 16-byte aligned, as the schema's `force_align: 16` asks.

    The generated Python object API ignores force_align; TensorFlow's converter
    honours it, and constant tensors read in place from a memory-mapped model
    keep the alignment they were written with.
    """

    def __init__(self, buffer) -> None:
        self.buffer = buffer

    def Pack(self, builder):  # the name the flatbuffers object API calls
        from ai_edge_litert import schema_py_generated as schema

        data = None
        if self.buffer.data is not None:
            payload = bytes(memoryview(self.buffer.data).cast("B"))
            builder.Prep(16, len(payload))
            data = builder.CreateByteVector(payload)
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.buffer.offset)
        schema.BufferAddSize(builder, self.buffer.size)
        return schema.BufferEnd(builder)


def embed_metadata(model: bytes, payload: bytes, name: str = METADATA_NAME) -> bytes:
    """`model` with `payload` in its metadata table under `name` (replacing an entry of that name).

    Tensors, operators and signatures are packed back unchanged; the model
    gives the same outputs. Refuses bytes that are not a TFLite flatbuffer.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if len(model) < 8 or model[4:8] != b"TFL3":
        raise UserInputError(
            "an artifact marked tflite is not a TFLite flatbuffer", hint="rebuild the bundle"
        )
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    kept = [m for m in (tree.metadata or []) if _text(m.name) != name]
    buffer = schema.BufferT()
    buffer.data = bytearray(payload)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [*kept, entry]
    tree.buffers = [_AlignedBuffer(b) for b in tree.buffers]
    builder = flatbuffers.Builder(len(model) + len(payload) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    result = bytes(builder.Output())
    if read_metadata(result, name) != payload:  # a bug here, not the user's input: no UserInputError
        raise RuntimeError(f"metadata {name!r} did not read back from the rewritten model")
    return result


def read_metadata(model: bytes, name: str = METADATA_NAME) -> bytes | None:
    """The bytes stored under `name` in a TFLite model's metadata table, None when absent."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    for index in range(root.MetadataLength()):
        entry = root.Metadata(index)
        if _text(entry.Name()) == name:
            buffer = root.Buffers(entry.Buffer())
            if buffer.Offset():  # data stored after the flatbuffer (models over 2 GB)
                return bytes(model[buffer.Offset() : buffer.Offset() + buffer.Size()])
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return None


def read_model_info(path: Path) -> AndroidModelInfo | None:
    """The model-info embedded in an exported .tflite file, None when it has none."""
    payload = read_metadata(Path(path).read_bytes())
    return None if payload is None else AndroidModelInfo.model_validate_json(payload)


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- Kotlin


def kotlin_float(value: float) -> str:
    """The shortest Kotlin Float literal that reads back as the same float32."""
    target = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == target:
            break
    if "." not in text and "e" not in text:
        text += ".0"
    return f"{text}f"


def _kotlin_tensor(spec: TensorInfo) -> str:
    shape = ", ".join(str(d) for d in spec.shape)
    args = [f"intArrayOf({shape})", f"DType.{spec.dtype.upper()}"]
    if spec.quantization is not None:
        args += [kotlin_float(spec.quantization.scale), str(spec.quantization.zero_point)]
    if spec.layout == "NCHW":
        args.append("nchw = true")
    return f"TensorSpec({', '.join(args)})"


def _kotlin_model(artifact: AndroidArtifact) -> str:
    """A ModelSpec expression, indented for the companion object."""
    inputs = "".join(f"                {_kotlin_tensor(t)},\n" for t in artifact.inputs)
    outputs = "".join(f"                {_kotlin_tensor(t)},\n" for t in artifact.outputs)
    return (
        f'ModelSpec(\n            "{_asset(artifact)}",\n'
        f"            inputs = listOf(\n{inputs}            ),\n"
        f"            outputs = listOf(\n{outputs}            ),\n        )"
    )


def _comment(text: str) -> str:
    return " ".join(str(text).split()).replace("*/", "* /")


def _tensor_line(spec: TensorInfo) -> str:
    text = f"{_comment(spec.name)} {spec.shape} {spec.dtype}" + (f" {spec.layout}" if spec.layout else "")
    if spec.quantization is not None:
        scale, zero_point = spec.quantization.scale, spec.quantization.zero_point
        shifted = f"q - {zero_point}" if zero_point >= 0 else f"q + {-zero_point}"
        text += f", real = ({shifted}) * {scale:.9g}"
    return text


def kotlin_runner(manifest: Manifest, info: AndroidModelInfo, package: str) -> str:
    """ModelRunner.kt: LiteRT Interpreter code for this model, with its numbers filled in."""
    tflite = [a for a in info.artifacts if a.runtime == "litert"]
    cpu = next((a for a in tflite if a.role == "model"), tflite[0])
    gpu = next((a for a in tflite if a.role == "gpu"), None)
    if gpu is None and cpu.precision != "int8" and "gpu" in cpu.delegates:
        gpu = cpu  # a float primary runs on the GPU delegate itself
    first, pre = cpu.inputs[0], info.normalization
    image = (
        pre.input == "image" and first.layout in ("NHWC", "NCHW") and first.dtype not in ("int32", "int64")
    )
    tokens = first.dtype in ("int32", "int64") and len(first.shape) <= 2
    values = {
        "PACKAGE": package,
        "NAME": manifest.name,
        "VERSION": str(manifest.version),
        "TARGET": manifest.target,
        "LITERT_VERSION": LITERT_VERSION,
        "CPU_ASSET": _asset(cpu),
        "GPU_ASSET": _asset(gpu) if gpu is not None else "",
        "INPUT_LINES": "\n".join(f"//   input  {_tensor_line(t)}" for t in cpu.inputs),
        "OUTPUT_LINES": "\n".join(f"//   output {_tensor_line(t)}" for t in cpu.outputs),
        "TASK": info.task,
        "NMS": _nms_comment(manifest),
        "COLOR": pre.color,
        "PIXEL_SCALE": kotlin_float(pre.scale),
        "FILL": str(pre.letterbox_fill),
        "LAYOUT": first.layout or "",
    }
    constants = [f"const val THREADS = {_profile_threads(manifest.target)}"]
    if info.labels_file:
        constants.append(f'const val LABELS_ASSET = "{info.labels_file.removeprefix(ASSETS + "/")}"')
    if image:
        channels = _channels(first)
        height, width = (first.shape[1], first.shape[2]) if first.layout == "NHWC" else first.shape[2:4]
        widen = lambda v: [v[0]] * channels if len(v) == 1 else list(v)  # noqa: E731
        values.update({"HEIGHT": str(height), "WIDTH": str(width)})
        constants += [
            f"const val HEIGHT = {height}",
            f"const val WIDTH = {width}",
            f"const val CHANNELS = {channels}",
            f"const val PIXEL_SCALE = {kotlin_float(pre.scale)}",
            f"val MEAN = floatArrayOf({', '.join(kotlin_float(v) for v in widen(pre.mean))})",
            f"val STD = floatArrayOf({', '.join(kotlin_float(v) for v in widen(pre.std))})",
        ]
    constants.append(f"val CPU_MODEL = {_kotlin_model(cpu)}")
    if gpu is not None:
        constants.append(f"val GPU_MODEL = {_kotlin_model(gpu)}")

    imports = [
        *_KT_IMPORTS,
        *(_KT_GPU_IMPORTS if gpu is not None else ()),
        *(_KT_IMAGE_IMPORTS if image else ()),
    ]
    values["IMPORTS"] = "\n".join(f"import {name}" for name in sorted(imports))
    values["GPU_GRADLE"] = (
        "\n//   and, for the GPU delegate, litert-gpu and litert-gpu-api (same group and version)"
        if gpu
        else ""
    )
    parts = [_KT_HEADER, _KT_RUNNER_GPU if gpu is not None else _KT_RUNNER_CPU]
    if info.labels_file:
        parts.append(_KT_LABELS)
    parts += [_KT_RUN, _KT_FLOATS]
    if image:
        parts.append(_KT_IMAGE)
        parts.append(_KT_LETTERBOX if pre.resize_mode == "letterbox" else _KT_STRETCH)
        parts.append(_KT_CHANNEL["GRAY" if _channels(first) == 1 else pre.color])
        if len(cpu.inputs) == 1:
            parts.append(_KT_RUN_BITMAP)
            if info.task == "classify" and info.labels_file:
                parts.append(_KT_CLASSIFY)
    if tokens:
        parts.append(_KT_TOKENS)
    parts.append(textwrap.indent(_KT_TYPES, "    "))
    parts.append("\n    companion object {\n" + "".join(f"        {line}\n" for line in constants))
    parts.append(_KT_LOAD)
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], "".join(parts))


def _asset(artifact: AndroidArtifact) -> str:
    return artifact.path.removeprefix(f"{ASSETS}/")


def _channels(spec: TensorInfo) -> int:
    return {"NHWC": spec.shape[-1], "NCHW": spec.shape[1]}.get(spec.layout or "", 1)


def _nms_comment(manifest: Manifest) -> str:
    nms = manifest.postprocessing.nms
    if manifest.postprocessing.task != "detect" or nms is None:
        return ""
    normalized = any(a.boxes == "normalized" for a in manifest.artifacts if a.format == "tflite")
    units = "normalized to 0..1 (multiply by the input width and height)" if normalized else "in input pixels"
    return (
        f"\n// Detector output ({nms.output_format}): (batch, 4 + classes, anchors), boxes cx, cy, w, h"
        f"\n// {units}; apply NMS with conf {nms.conf_threshold:g}, IoU {nms.iou_threshold:g}, "
        f"at most {nms.max_detections} boxes."
    )


_KT_HEADER = template("android/header.kt")

_KT_IMPORTS = (
    "android.content.Context",
    "android.util.Half",
    "java.io.FileInputStream",
    "java.nio.ByteBuffer",
    "java.nio.ByteOrder",
    "java.nio.MappedByteBuffer",
    "java.nio.channels.FileChannel",
    "org.tensorflow.lite.Interpreter",
)
_KT_GPU_IMPORTS = ("org.tensorflow.lite.gpu.CompatibilityList", "org.tensorflow.lite.gpu.GpuDelegate")
_KT_IMAGE_IMPORTS = ("android.graphics.Bitmap",)

_KT_TYPES = template("android/types.kt")

_KT_RUNNER_CPU = template("android/runner_cpu.kt")

_KT_RUNNER_GPU = template("android/runner_gpu.kt")

_KT_LABELS = template("android/labels.kt")

_KT_RUN = template("android/run.kt")

_KT_FLOATS = template("android/floats.kt")

_KT_IMAGE = template("android/image.kt")

_KT_STRETCH = template("android/stretch.kt")

_KT_LETTERBOX = template("android/letterbox.kt")

_KT_CHANNEL = {
    "RGB": template("android/channel_rgb.kt"),
    "BGR": template("android/channel_bgr.kt"),
    "GRAY": template("android/channel_gray.kt"),
}

_KT_RUN_BITMAP = template("android/run_bitmap.kt")

_KT_CLASSIFY = template("android/classify.kt")

_KT_TOKENS = template("android/tokens.kt")

_KT_LOAD = template("android/load.kt")


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
