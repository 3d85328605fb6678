"""User data: calibration inputs and labeled validation sets, preprocessed as the manifest says.

Three shapes of data are understood:
- an image folder (calibration: any images below it; validation: one sub-folder per class),
- `.npy` / `.npz` arrays already in the model's input layout,
- an Ultralytics YOLO dataset (`data.yaml`, or a folder with images/ and labels/) for detectors.
Nothing is ever invented: a missing or unfit dataset is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebundle.manifest import Preprocessing
from toolchain.errors import CalibrationError, UserInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs


@dataclass
class Letterbox:
    """Where the original image lies inside the model input, to move boxes between the two."""

    ratio: float
    pad_x: float
    pad_y: float


@dataclass
class ClassificationSet:
    inputs: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str


@dataclass
class DetectionSet:
    inputs: np.ndarray
    # per image: (m, 5) class, x1, y1, x2, y2 in model-input pixels
    boxes: list[np.ndarray]
    class_names: list[str]
    source: str
    files: list[Path] = field(default_factory=list)


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def input_hw(shape: list[int], layout: str) -> tuple[int, int]:
    if len(shape) != 4:
        raise UserInputError(
            f"image data needs a 4-D model input, this model's input shape is {shape}",
            hint="pass arrays in a .npy/.npz file instead of an image folder",
        )
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def load_image(path: Path, pre: Preprocessing, shape: list[int]) -> tuple[np.ndarray, Letterbox]:
    """Read one image and return it as the model expects (without batch axis)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    height, width = input_hw(shape, pre.layout)
    try:
        with Image.open(path) as img:
            img = img.convert("L" if pre.color == "GRAY" else "RGB")
            w0, h0 = img.size
            if pre.resize_mode == "letterbox":
                ratio = min(width / w0, height / h0)
                new_w, new_h = round(w0 * ratio), round(h0 * ratio)
                resized = img.resize((new_w, new_h), Image.BILINEAR)
                fill = pre.letterbox_fill if img.mode == "L" else (pre.letterbox_fill,) * 3
                canvas = Image.new(img.mode, (width, height), fill)
                pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
                canvas.paste(resized, (pad_x, pad_y))
                img, box = canvas, Letterbox(ratio, pad_x, pad_y)
            else:
                img = img.resize((width, height), Image.BILINEAR)
                box = Letterbox(min(width / w0, height / h0), 0.0, 0.0)
            array = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserInputError(f"cannot read image {path}: {exc}", hint="remove or fix the file") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if pre.color == "BGR":
        array = array[:, :, ::-1]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    array = (array * pre.scale - mean) / std
    if pre.layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array, dtype=np.float32), box


def _check_shape(arr: np.ndarray, shape: list[int], what: str, path: Path) -> np.ndarray:
    expected = tuple(shape[1:])
    if arr.ndim == len(shape) - 1:
        arr = arr[None]
    dynamic_ok = all(e <= 0 or e == a for e, a in zip(expected, arr.shape[1:], strict=False))
    if arr.ndim != len(shape) or not dynamic_ok:
        raise CalibrationError(
            f"{what} in {path} has shape {list(arr.shape)}; the model's input is {shape}",
            hint=f"save an array of shape (N, {', '.join(str(d) for d in expected)})",
        )
    return arr.astype(np.float32, copy=False)


def _load_array_file(path: Path, key_candidates: tuple[str, ...]) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            for key in key_candidates:
                if key in data.files:
                    return data[key]
            return data[data.files[0]]
    except (OSError, ValueError, IndexError) as exc:
        raise UserInputError(f"cannot read array file {path}: {exc}", hint="save it with numpy.save") from exc


def _evenly(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def load_calibration(path: Path, pre: Preprocessing, shape: list[int], limit: int = 128) -> np.ndarray:
    """Calibration inputs in the model's input layout, at most `limit` of them, evenly sampled."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration data {path} does not exist", hint="pass --calib DIR_OR_NPY")
    if path.is_file() and path.suffix in (".npy", ".npz"):
        arr = _check_shape(_load_array_file(path, ("x", "inputs", "images")), shape, "calibration data", path)
        if len(arr) == 0:
            raise CalibrationError(f"calibration data {path} is empty", hint="give at least one sample")
        return arr[np.linspace(0, len(arr) - 1, min(limit, len(arr))).round().astype(int)]
    if path.is_file() and path.suffix == ".yaml":
        path = _yolo_split_dir(path, "train")
    if not path.is_dir():
        raise CalibrationError(
            f"calibration data {path} is neither an image folder nor a .npy/.npz file",
            hint="pass a folder of images or a .npy array of model inputs",
        )
    files = _evenly(_image_files(path), limit)
    if not files:
        raise CalibrationError(f"no images found under {path}", hint=f"image types: {sorted(IMAGE_SUFFIXES)}")
    return np.stack([load_image(f, pre, shape)[0] for f in files])


def load_classification_set(path: Path, pre: Preprocessing, shape: list[int], limit: int = 5000):
    """A labeled set: a folder of class sub-folders, or an .npz with arrays x and y."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"validation data {path} does not exist", hint="pass --val DIR_OR_NPZ")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise UserInputError(
                    f"{path} needs arrays 'x' (inputs) and 'y' (class indices)",
                    hint="numpy.savez(path, x=inputs, y=labels)",
                )
            x = _check_shape(data["x"], shape, "validation data", path)
            y = data["y"].astype(np.int64)
        if len(x) == 0 or len(x) != len(y):
            raise UserInputError(
                f"{path}: x and y must be non-empty and of equal length", hint="check the arrays"
            )
        names = [str(i) for i in range(int(y.max()) + 1)]
        return ClassificationSet(x[:limit], y[:limit], names, str(path))
    if not path.is_dir():
        raise UserInputError(
            f"validation data {path} is neither a folder nor an .npz file",
            hint="pass a folder of class sub-folders",
        )
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [(f, i) for i, d in enumerate(class_dirs) for f in _image_files(d)]
    if not samples:
        raise UserInputError(
            f"validation folder {path} has no images in class sub-folders",
            hint="lay it out as VAL/<class name>/<image>, one sub-folder per class",
        )
    samples = _evenly(samples, limit)
    x = np.stack([load_image(f, pre, shape)[0] for f, _ in samples])
    y = np.asarray([label for _, label in samples], dtype=np.int64)
    return ClassificationSet(x, y, [d.name for d in class_dirs], str(path))


def _yolo_split_dir(data_yaml: Path, split: str) -> Path:
    import yaml

    try:
        spec = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"cannot read dataset file {data_yaml}: {exc}", hint="check the YAML") from exc
    if not isinstance(spec, dict) or split not in spec:
        raise UserInputError(
            f"{data_yaml} has no '{split}' entry", hint="use the Ultralytics data.yaml format"
        )
    root = Path(spec.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    entry = spec[split]
    return (root / (entry[0] if isinstance(entry, list) else entry)).resolve()


def _yolo_names(data_yaml: Path | None) -> list[str]:
    if data_yaml is None:
        return []
    import yaml

    names = (yaml.safe_load(data_yaml.read_text()) or {}).get("names", [])
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def load_detection_set(path: Path, pre: Preprocessing, shape: list[int], limit: int = 2000) -> DetectionSet:
    """An Ultralytics YOLO dataset's val split, boxes moved into model-input pixels."""
    path = Path(path)
    data_yaml = path if path.is_file() and path.suffix in (".yaml", ".yml") else None
    if data_yaml is None and path.is_dir() and (path / "data.yaml").is_file():
        data_yaml = path / "data.yaml"
    images_dir = _yolo_split_dir(data_yaml, "val") if data_yaml else path / "images" / "val"
    if not images_dir.is_dir():
        raise UserInputError(
            f"no YOLO validation images at {images_dir}",
            hint="pass the dataset's data.yaml, or a folder with images/val and labels/val",
        )
    files = _evenly(_image_files(images_dir), limit)
    if not files:
        raise UserInputError(
            f"validation folder {images_dir} has no images", hint="add images to the val split"
        )
    from toolchain.detection import yolo_labels_to_xyxy

    inputs, boxes = [], []
    for file in files:
        array, box = load_image(file, pre, shape)
        inputs.append(array)
        label_file = _label_path_for(file)
        rows = np.zeros((0, 5), dtype=np.float32)
        if label_file.is_file() and label_file.stat().st_size:
            rows = np.loadtxt(label_file, dtype=np.float32, ndmin=2)[:, :5]
        from PIL import Image

        with Image.open(file) as img:
            w0, h0 = img.size
        xyxy = yolo_labels_to_xyxy(rows, w0, h0)
        xyxy[:, 1:] *= box.ratio
        xyxy[:, [1, 3]] += box.pad_x
        xyxy[:, [2, 4]] += box.pad_y
        boxes.append(xyxy)
    return DetectionSet(np.stack(inputs), boxes, _yolo_names(data_yaml), str(path), files)


def _label_path_for(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
