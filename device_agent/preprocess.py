"""Turn what a caller sends (an encoded image, or raw tensors) into the model's inputs, as the manifest says.

Images follow `Preprocessing`: decode, colour order, resize (stretch, or
letterbox with the fill value, the original centred like the toolchain's
data loader), x = (pixel * scale - mean) / std per channel, the layout, and
the artifact input's dtype (int8 / uint8 through its scale and zero point).
The float tensor before that last cast is kept for the drift statistics, and
a `Placement` says where the original image lies, so boxes can be moved back.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device_agent.errors import InferenceInputError

if TYPE_CHECKING:
    import numpy as np

    from device_agent.runtimes import TensorInfo
    from edgebundle.manifest import Preprocessing

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs before decoding them
DRIFT_VALUES_PER_CHANNEL = 4096  # drift statistics on a strided subsample: cheap next to inference


@dataclass(frozen=True)
class Placement:
    """Where the original image lies in the model input: model = original * ratio + pad."""

    width: int
    height: int
    ratio_x: float
    ratio_y: float
    pad_x: float
    pad_y: float


def input_hw(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    if len(shape) != 4:
        raise InferenceInputError(
            f"the model's input has shape {list(shape)}, not an image batch",
            hint="send a raw tensor (.npy) instead of an image",
        )
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def quantize(x: np.ndarray, dtype: str, quantization: tuple[float, int]) -> np.ndarray:
    import numpy as np

    scale, zero_point = quantization
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, quantization: tuple[float, int] | None) -> np.ndarray:
    import numpy as np

    if quantization is None or x.dtype.kind not in "iu":
        return x if x.dtype == np.float32 else x.astype(np.float32)
    scale, zero_point = quantization
    return (x.astype(np.float32) - zero_point) * np.float32(scale)


def to_input_dtype(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A float tensor in the artifact input's dtype (quantized when the input is integer with parameters)."""
    if info.dtype in ("int8", "uint8") and info.quantization is not None:
        return quantize(x, info.dtype, info.quantization)
    if info.dtype in ("float32", "float16"):
        return x.astype(info.dtype, copy=False)
    raise InferenceInputError(
        f"input {info.name!r} is {info.dtype} without quantization parameters; an image cannot be fed to it",
        hint="send a raw tensor of that dtype (.npy) instead",
    )


def drift_view(x: np.ndarray, layout: str | None) -> np.ndarray:
    """A strided subsample of a batch with about DRIFT_VALUES_PER_CHANNEL values per channel, same layout."""
    if x.ndim == 4 and layout in ("NCHW", "NHWC"):
        height, width = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
        step = max(1, math.ceil(math.sqrt(height * width / DRIFT_VALUES_PER_CHANNEL)))
        return x[:, :, ::step, ::step] if layout == "NCHW" else x[:, ::step, ::step, :]
    step = max(1, x.size // (x.shape[0] if x.ndim else 1) // (DRIFT_VALUES_PER_CHANNEL * 16))
    return x.reshape(x.shape[0] if x.ndim else 1, -1)[:, ::step]


class ImagePreprocessor:
    """Image bytes -> (model input, float input, placement) for one artifact input."""

    def __init__(self, pre: Preprocessing, info: TensorInfo) -> None:
        import numpy as np

        self.pre = pre
        self.info = info
        self.height, self.width = pre.resize or input_hw(info.shape, pre.layout)
        if self.height <= 0 or self.width <= 0:
            raise InferenceInputError(
                f"the model's input {list(info.shape)} has a dynamic size and the manifest gives no resize",
                hint="rebuild the bundle with a static input shape",
            )
        self.channels = 1 if pre.color == "GRAY" else 3
        expected = info.shape[1] if pre.layout == "NCHW" else info.shape[-1]
        if len(info.shape) == 4 and expected not in (-1, self.channels):
            raise InferenceInputError(
                f"the manifest says {pre.color} ({self.channels} channels) but the model takes {expected}",
                hint="rebuild the bundle; its preprocessing does not match its model",
            )
        self._mean = np.asarray(pre.mean, dtype=np.float32)
        self._std = np.asarray(pre.std, dtype=np.float32)
        self._raw_pixels = (
            info.dtype == "uint8" and info.quantization is None
        )  # the model takes 0..255 itself

    def decode(self, data: bytes):
        from PIL import Image, ImageOps, UnidentifiedImageError

        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        mode = "L" if self.pre.color == "GRAY" else "RGB"
        try:
            image = Image.open(io.BytesIO(data))
            ImageOps.exif_transpose(image, in_place=True)  # phone photos: upright, as a person sees them
            return image if image.mode == mode else image.convert(mode)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InferenceInputError(
                f"cannot decode the image: {str(exc)[:200]}", hint="send a JPEG, PNG or BMP file"
            ) from None

    def resize(self, image) -> tuple[object, Placement]:
        from PIL import Image

        w0, h0 = image.size
        if self.pre.resize_mode == "letterbox":
            ratio = min(self.width / w0, self.height / h0)
            new_w, new_h = max(1, round(w0 * ratio)), max(1, round(h0 * ratio))
            fill = self.pre.letterbox_fill if image.mode == "L" else (self.pre.letterbox_fill,) * 3
            canvas = Image.new(image.mode, (self.width, self.height), fill)
            pad_x, pad_y = (self.width - new_w) // 2, (self.height - new_h) // 2
            canvas.paste(image.resize((new_w, new_h), Image.BILINEAR), (pad_x, pad_y))
            return canvas, Placement(w0, h0, new_w / w0, new_h / h0, pad_x, pad_y)
        if (w0, h0) != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BILINEAR)
        return image, Placement(w0, h0, self.width / w0, self.height / h0, 0.0, 0.0)

    def __call__(self, data) -> tuple[np.ndarray, np.ndarray, Placement]:
        """`data`: encoded image bytes, or an already decoded PIL image (video frames)."""
        import numpy as np

        if isinstance(data, bytes | bytearray | memoryview):
            image = self.decode(bytes(data))
        else:
            image = data.convert("L" if self.pre.color == "GRAY" else "RGB")
        image, placement = self.resize(image)
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.pre.color == "BGR":
            pixels = pixels[:, :, ::-1]
        x = (pixels.astype(np.float32) * np.float32(self.pre.scale) - self._mean) / self._std
        if self.pre.layout == "NCHW":
            x, pixels = x.transpose(2, 0, 1), pixels.transpose(2, 0, 1)
        x = np.ascontiguousarray(x[None])
        model_input = np.ascontiguousarray(pixels[None]) if self._raw_pixels else to_input_dtype(x, self.info)
        return model_input, x, placement


def load_tensors(data: bytes, inputs: list[TensorInfo]) -> list[np.ndarray]:
    """Raw tensors from .npy (one input) or .npz (by input name, else in order), checked against the inputs."""
    import numpy as np

    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InferenceInputError(
            f"cannot read the tensor: {str(exc)[:200]}",
            hint="send a file written by numpy.save or numpy.savez",
        ) from None
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        with loaded:
            names = loaded.files
            if all(info.name in names for info in inputs):
                arrays = [loaded[info.name] for info in inputs]
            else:
                arrays = [loaded[name] for name in names]
    if len(arrays) != len(inputs):
        raise InferenceInputError(
            f"the model takes {len(inputs)} input(s) ({', '.join(i.name for i in inputs)}), got {len(arrays)}",
            hint="send one .npy for one input, or an .npz keyed by input name",
        )
    return [conform(array, info) for array, info in zip(arrays, inputs, strict=True)]


def conform(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The array with a batch axis and in the input's dtype, or InferenceInputError saying what is wrong."""
    import numpy as np

    if array.shape == info.shape and array.dtype == info.dtype:  # the common case, checked cheaply (in C)
        return array
    if array.ndim == len(info.shape) - 1:
        array = array[None]
    shape_ok = array.ndim == len(info.shape) and all(
        want in (-1, got) for want, got in zip(info.shape, array.shape, strict=True)
    )
    if not shape_ok:
        raise InferenceInputError(
            f"input {info.name!r} needs shape {list(info.shape)}, got {list(array.shape)}",
            hint="-1 marks a free axis; the batch axis may be left out",
        )
    if array.dtype == np.dtype(info.dtype):
        return array
    if array.dtype.kind == "f" and info.dtype in ("int8", "uint8") and info.quantization is not None:
        return quantize(array.astype(np.float32), info.dtype, info.quantization)
    if array.dtype.kind in "fiu" and info.dtype in ("float32", "float16"):
        return array.astype(info.dtype)
    if array.dtype.kind in "iu" and info.dtype in ("int32", "int64", "int8", "uint8"):
        limits = np.iinfo(info.dtype)
        if array.size == 0 or (array.min() >= limits.min and array.max() <= limits.max):
            return array.astype(info.dtype)
    raise InferenceInputError(
        f"input {info.name!r} is {info.dtype}; a {array.dtype} tensor cannot be converted to it safely",
        hint=f"send a {info.dtype} tensor",
    )
