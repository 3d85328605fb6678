"""Core ML packages from the PyTorch source: the module, what wraps it, the conversion, compression, metadata.

Core ML has no ONNX front end any more, so the iOS target starts from the model the user gave
(TorchScript, torch.export, an entry point with --weights, an Ultralytics checkpoint or yaml). The module
is wrapped so that the package says what Vision expects, traced, and converted to an ML Program:

- an image input is an `ImageType`: Core ML computes `scale * pixel + bias[c]` from the camera frame, in
  the model's color order. The manifest's `(pixel * scale - mean[c]) / std[c]` is exactly that when std
  is one number; a per-channel std becomes one multiply at the start of the model (`std_in_model`);
- a classifier carries its labels (`ClassifierConfig`) and outputs probabilities: a softmax is appended
  when the model ends in logits, because Vision reads the outputs as confidences in [0, 1];
- an Ultralytics detector gets the outputs Vision's object detector reads, and an NMS stage
  (`toolchain.backends.coreml.detector`).

`--precision int8` and `--palettize N` compress weights only (coremltools.optimize): Core ML decompresses
them to fp16 when it loads the model, and computes in fp16.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebundle.manifest import CoreMLWeights, Preprocessing
from toolchain.errors import ExportError, UserInputError

# Core ML's 8-bit linear quantization for an iOS 16 target: symmetric int8, one scale per output channel.
INT8_CONFIG = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
COMPRESSED_OPS = {
    "int8-linear": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
    "palettized": ("constexpr_lut_to_dense",),
}
IMAGE_INPUT = "image"
CLASS_LABEL = "classLabel"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
# What the user-defined metadata of every package built here holds (besides coremltools' own keys).
META_SOURCE_SHA256 = "edgectl.source_sha256"
META_SOURCE_FILE = "edgectl.source_file"
META_EDGECTL = "edgectl.version"
META_PREPROCESSING = "edgectl.preprocessing"
META_WEIGHTS = "edgectl.weights"
META_TASK = "edgectl.task"
META_PREVIEW = "com.apple.coreml.model.preview.type"  # Xcode's preview tab: imageClassifier, objectDetector


@contextlib.contextmanager
def scalar_cast_fix():
    """Convert traced `int(tensor)` / `bool(tensor)` under numpy 2.4, which coremltools 9.0 cannot.

    A traced `int(H * W)` (Ultralytics' attention block) reaches coremltools as a one-element array, and
    coremltools 9.0 calls `int()` on it, which numpy 2.4 refuses (apple/coremltools#2633, fixed after
    9.0 by #2632). These two ops are registered again through coremltools' own extension point
    (`register_torch_op(override=True)`) for the length of the conversion, then restored.
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY,
        register_torch_op,
    )

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    saved = {name: table.get(name) for name in ("_int", "int", "_bool", "bool")}

    def cast(context, node, python_type, dtype: str) -> None:
        (x,) = _get_inputs(context, node, expected=1)
        if x.can_be_folded_to_const():
            result = mb.const(val=python_type(np.asarray(x.val).reshape(-1)[0]), name=node.name)
        elif len(x.shape) > 0:
            result = mb.cast(x=mb.squeeze(x=x, name=node.name + "_item"), dtype=dtype, name=node.name)
        else:
            result = mb.cast(x=x, dtype=dtype, name=node.name)
        context.add(result, node.name)

    def _int(context, node):
        cast(context, node, int, "int32")

    def _bool(context, node):
        cast(context, node, bool, "bool")

    register_torch_op(_int, torch_alias=["int"], override=True)
    register_torch_op(_bool, torch_alias=["bool"], override=True)
    try:
        yield
    finally:
        for name, func in saved.items():
            if func is None:
                table.pop(name, None)
            else:
                table[name] = func


# --------------------------------------------------------------------------- the input


@dataclass(frozen=True)
class ImageInput:
    """How Core ML turns a camera frame into the model's input: `scale * pixel + bias[c]`, then `/ std[c]`."""

    shape: tuple[int, ...]  # as the model takes it: (1, C, H, W), or (1, H, W, C) when channel_first is False
    channel_first: bool
    color: str  # RGB, BGR or GRAY: the channel order the model takes
    scale: float
    bias: tuple[float, ...]
    std_in_model: tuple[float, ...] = ()  # a per-channel std the model divides by first; () when none

    @property
    def channels(self) -> int:
        return self.shape[1] if self.channel_first else self.shape[3]

    @property
    def height_width(self) -> tuple[int, int]:
        return (self.shape[2], self.shape[3]) if self.channel_first else (self.shape[1], self.shape[2])


def image_input(pre: Preprocessing | None, shape: list[int]) -> ImageInput | None:
    """The ImageType for this preprocessing and shape, or None when the input is not a 1- or 3-channel image."""
    if pre is None or pre.input != "image" or len(shape) != 4 or shape[0] != 1:
        return None
    channel_first = pre.layout != "NHWC"
    channels = shape[1] if channel_first else shape[3]
    if channels not in (1, 3):
        return None
    color = "GRAY" if channels == 1 else pre.color
    if color == "GRAY" and channels != 1:
        return None
    mean = list(pre.mean) if len(pre.mean) == channels else list(pre.mean[:1]) * channels
    std = list(pre.std) if len(pre.std) == channels else list(pre.std[:1]) * channels
    if len(set(std)) == 1:  # one std: fold it into Core ML's scale and bias, exactly
        return ImageInput(
            tuple(shape), channel_first, color, pre.scale / std[0], tuple(0.0 - m / std[0] for m in mean)
        )
    return ImageInput(tuple(shape), channel_first, color, pre.scale, tuple(0.0 - m for m in mean), tuple(std))


# --------------------------------------------------------------------------- the module


_KIND_NAMES = {"onnx": "an ONNX model", "keras": "a Keras model", "saved-model": "a TensorFlow SavedModel"}


def source_module(source):
    """The PyTorch module behind `source`, in inference form; Core ML converts nothing else."""
    if source.kind == "ultralytics":
        return _ultralytics_module(source)
    from toolchain.source_export import load_torch_module

    module = load_torch_module(source)
    if module is None:
        raise UserInputError(
            f"{source.filename} is {_KIND_NAMES.get(source.kind, f'a {source.kind} model')}; Core ML converts "
            "from PyTorch (coremltools has no ONNX front end any more)",
            hint="build the ios target from the PyTorch model: TorchScript, a torch.export .pt2, an Ultralytics "
            ".pt/.yaml, or package.module:factory with --weights",
        )
    return module  # in eval mode already; a torch.export module refuses eval() and is inference-only anyway


def _ultralytics_module(source):
    """The Ultralytics network as its own exporter prepares it: float, fused, the head in export mode."""
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.modules.block import Attention

    from toolchain.source_export import load_ultralytics

    network = copy.deepcopy(load_ultralytics(source.location).model).float().eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    network = network.fuse()
    for module in network.modules():
        if isinstance(module, Detect):  # one (batch, 4 + classes, anchors) tensor, boxes as centre xywh
            module.export, module.format, module.dynamic, module.xyxy, module.shape = (
                True,
                "coreml",
                False,
                False,
                None,
            )
        elif isinstance(module, Attention):  # its Core ML path: scaled_dot_product_attention, same maths
            module.format = "coreml"
        elif hasattr(module, "export") and type(module).__name__ == "Classify":  # probabilities, not a tuple
            module.export = True
    return network


def _wrapper(model, image: ImageInput | None, softmax: bool, head):
    import torch

    class CoreMLWrapper(torch.nn.Module):
        """What is traced: the source model and the few ops that make the package say what Vision expects."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = head
            self.softmax = softmax
            self.divide = bool(image and image.std_in_model)
            if self.divide:
                view = (1, -1, 1, 1) if image.channel_first else (1, 1, 1, -1)
                self.register_buffer("std", torch.tensor(image.std_in_model, dtype=torch.float32).view(view))

        def forward(self, x):
            if self.divide:
                x = x / self.std
            y = self.model(x)
            if self.head is not None:
                return self.head(y)
            if self.softmax:
                return torch.softmax(y, dim=-1)
            return y

    wrapper = CoreMLWrapper()
    # this module alone: the source model keeps its own mode (a torch.export module refuses eval())
    wrapper.training = False
    return wrapper


def are_probabilities(values: list[np.ndarray]) -> bool:
    """Whether a classifier's outputs already are probabilities (non-negative rows summing to 1)."""
    if not values:
        return False
    rows = np.asarray(values[0], dtype=np.float64).reshape(len(values[0]), -1)
    return bool(rows.min() >= -1e-6 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


# --------------------------------------------------------------------------- conversion


@dataclass
class Conversion:
    """What the converter asks for; `convert` turns it into an ML Program (an MLModel in memory)."""

    module: object  # the torch.nn.Module to wrap
    input_shape: list[int]
    image: ImageInput | None
    labels: list[str] = field(default_factory=list)  # non-empty: a Core ML classifier (ClassifierConfig)
    softmax: bool = False
    head: object | None = None  # a torch module applied to the model's output (the detector outputs)
    output_names: list[str] = field(default_factory=list)
    input_name: str = IMAGE_INPUT
    compute_precision: str = "fp16"
    deployment_target: str = "iOS16"

    def wrapped(self):
        """The module that is traced and converted: the source model and what wraps it, in PyTorch."""
        return _wrapper(self.module, self.image, self.softmax, self.head)


def deployment_target(ct, name: str):
    target = getattr(ct.target, name, None)
    if target is None:
        known = ", ".join(t.name for t in ct.target)
        raise UserInputError(
            f"unknown Core ML deployment target {name!r} in the target profile",
            hint=f"options.minimum_deployment_target takes one of: {known}",
        )
    return target


def convert(ct, plan: Conversion):
    """Trace the wrapped module and convert it to an ML Program; nothing is written to disk."""
    import torch

    wrapper = plan.wrapped()
    example = torch.zeros(*plan.input_shape)
    if plan.image is not None:
        example = example + 0.5  # inside the pixel range: traced shape arithmetic sees ordinary values
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False, strict=False)
    if plan.image is not None:
        image = plan.image
        layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "GRAY": ct.colorlayout.GRAYSCALE}
        bias = image.bias[0] if image.color == "GRAY" else list(image.bias)
        inputs = [
            ct.ImageType(
                name=plan.input_name,
                shape=image.shape,
                scale=image.scale,
                bias=bias,
                color_layout=layout[image.color],
                channel_first=image.channel_first,
            )
        ]
    else:
        inputs = [ct.TensorType(name=plan.input_name, shape=tuple(plan.input_shape), dtype=np.float32)]
    kwargs: dict = {}
    if plan.labels:
        kwargs["classifier_config"] = ct.ClassifierConfig(
            list(plan.labels), predicted_feature_name=CLASS_LABEL
        )
    elif plan.output_names:
        # float32 outputs: the NMS stage takes nothing else, and apps read them as Float
        kwargs["outputs"] = [ct.TensorType(name=name, dtype=np.float32) for name in plan.output_names]
    precision = ct.precision.FLOAT16 if plan.compute_precision == "fp16" else ct.precision.FLOAT32
    target = deployment_target(ct, plan.deployment_target)
    try:
        with scalar_cast_fix():
            return ct.convert(
                traced,
                inputs=inputs,
                convert_to="mlprogram",
                compute_precision=precision,
                minimum_deployment_target=target,
                skip_model_load=True,  # Core ML itself loads models only on macOS
                **kwargs,
            )
    except Exception as exc:  # coremltools raises plain exceptions for what it cannot convert
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        op = re.search(r"`(\w+)` op|'(\w+)' op", str(exc))
        which = f" (operator {op.group(1) or op.group(2)})" if op else ""
        raise ExportError(
            f"coremltools {ct.__version__} cannot convert the model{which}: "
            f"{(lines[0] if lines else type(exc).__name__)[:200]}",
            hint="replace that operation in the model, or build a target whose runtime takes it "
            "('edgectl targets' lists them)",
        ) from exc


# --------------------------------------------------------------------------- metadata


def describe(
    mlmodel,
    *,
    source,
    task: str,
    precision: str,
    weights: CoreMLWeights,
    preprocessing: Preprocessing | None,
    edgectl_version: str,
) -> None:
    """Model metadata for Xcode and for whoever finds the package alone: what it is and where it came from.

    Author, license and version belong to the bundle and the app; `edgectl export ios` stamps them.
    """
    what = {"classify": "image classifier", "detect": "object detector"}.get(task, "model")
    mlmodel.short_description = (
        f"{what} from {source.filename}, built by edgectl {edgectl_version} for iOS: {precision} "
        f"({weights.summary})"
    )
    meta = {
        META_SOURCE_SHA256: source.sha256,
        META_SOURCE_FILE: source.filename,
        META_EDGECTL: edgectl_version,
        META_TASK: task,
        META_WEIGHTS: weights.summary,
    }
    if preprocessing is not None:
        meta[META_PREPROCESSING] = json.dumps(preprocessing.model_dump(mode="json"), sort_keys=True)
    preview = {"classify": "imageClassifier", "detect": "objectDetector"}.get(task)
    if preview:
        meta[META_PREVIEW] = preview
    mlmodel.user_defined_metadata.update(meta)


def package_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
