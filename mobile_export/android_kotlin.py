"""ModelRunner.kt: the LiteRT Interpreter code `edgectl export android` writes, with the model's numbers in it.

The Kotlin itself is template files (`mobile_export/templates/android/`); this module picks the
parts a model needs (GPU delegate or not, image or token input, letterbox or stretch, labels) and
fills in its shapes, types, quantization and normalization as exact Kotlin literals.
"""

from __future__ import annotations

import re
import struct
import textwrap

from edgebundle.manifest import Manifest
from mobile_export.android import ASSETS, LITERT_VERSION, AndroidArtifact, AndroidModelInfo, profile_threads
from mobile_export.common import TensorInfo, template


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
    constants = [f"const val THREADS = {profile_threads(manifest.target)}"]
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
