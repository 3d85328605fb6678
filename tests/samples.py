"""Small, real-ish sample data the tests and benchmarks make themselves (no downloads); not shipped in the package.

- `make_shapes_detection_dataset` draws an Ultralytics YOLO-format detection dataset of filled squares,
  circles and triangles on noisy, textured backgrounds, with exact tight box labels.
- `train_tiny_yolo` trains an Ultralytics YOLO detector on it, on the CPU and fully offline, in a few minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SHAPE_NAMES = {0: "square", 1: "circle", 2: "triangle"}
_MAX_TRIES = 60  # placement attempts per shape before giving up on it
_MAX_OVERLAP = 0.3  # shapes may overlap, but at most 30% of the smaller one's box is covered


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured (H, W, 3) uint8 background: colour gradient, low-frequency blobs, stripes and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    tilt = rng.uniform(-50, 50, size=(2, 3)).astype(np.float32)
    img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    # low-frequency blotches: a coarse random grid upsampled by nearest neighbour, then box-blurred
    cells = int(rng.integers(3, 7))
    coarse = rng.normal(0, 18, size=(cells, cells, 3)).astype(np.float32)
    idx = (np.arange(size) * cells // size).clip(0, cells - 1)
    blotch = coarse[idx][:, idx]
    kernel = max(3, size // cells // 2)
    for axis in (0, 1):
        blotch = sum(np.roll(blotch, s, axis=axis) for s in range(-kernel // 2, kernel // 2 + 1)) / (
            kernel + 1
        )
    img += blotch
    if rng.random() < 0.5:  # faint stripes in a random direction
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * size * 2 * np.pi / period
        img += (np.sin(phase) * rng.uniform(5, 15))[..., None]
    img += rng.normal(0, rng.uniform(3, 12), size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from the background's mean colour."""
    mean = background.reshape(-1, 3).mean(0)
    colour = rng.integers(0, 256, size=3)
    for _ in range(50):
        if np.abs(colour - mean).sum() > 150:
            break
        colour = rng.integers(0, 256, size=3)
    return int(colour[0]), int(colour[1]), int(colour[2])


def _shape_polygon(rng: np.random.Generator, kind: int, x: float, y: float, side: float) -> list[tuple]:
    """Vertices of a square or triangle inscribed in the box (x, y, x + side, y + side)."""
    if kind == 0:
        return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    # triangle: pointing up, down, left or right; apex anywhere along the opposite edge
    t = rng.uniform(0.2, 0.8)
    direction = int(rng.integers(0, 4))
    if direction == 0:
        return [(x + t * side, y), (x + side, y + side), (x, y + side)]
    if direction == 1:
        return [(x, y), (x + side, y), (x + t * side, y + side)]
    if direction == 2:
        return [(x, y + t * side), (x + side, y), (x + side, y + side)]
    return [(x, y), (x + side, y + t * side), (x, y + side)]


def _draw_image(rng: np.random.Generator, imgsz: int):
    """One image and its (m, 5) YOLO labels (class, cx, cy, w, h normalised)."""
    from PIL import Image, ImageDraw

    background = _background(rng, imgsz)
    image = Image.fromarray(background, "RGB")
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[list[float]] = []
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(0, 3))
        for _ in range(_MAX_TRIES):
            side = rng.uniform(0.12, 0.45) * imgsz
            stretch = kind == 2 and rng.random() < 0.5  # triangles sometimes stretched a little
            aspect = rng.uniform(0.75, 1.33) if stretch else 1.0
            w, h = side * min(aspect, 1.0), side / max(aspect, 1.0)
            x, y = rng.uniform(0, imgsz - w), rng.uniform(0, imgsz - h)
            mask = Image.new("L", (imgsz, imgsz), 0)
            mask_draw = ImageDraw.Draw(mask)
            if kind == 1:
                mask_draw.ellipse([x, y, x + side - 1, y + side - 1], fill=255)
            else:
                poly = [
                    (x + (px - x) * w / side, y + (py - y) * h / side)
                    for px, py in _shape_polygon(rng, kind, x, y, side)
                ]
                mask_draw.polygon(poly, fill=255)
            box = mask.getbbox()  # tight box of the drawn pixels, right/bottom exclusive
            if box is None or box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            if any(_overlap(box, other) > _MAX_OVERLAP for other in boxes):
                continue
            image.paste(_shape_colour(rng, background), (0, 0), mask)
            boxes.append(box)
            x1, y1, x2, y2 = box
            labels.append(
                [kind, (x1 + x2) / 2 / imgsz, (y1 + y2) / 2 / imgsz, (x2 - x1) / imgsz, (y2 - y1) / imgsz]
            )
            break
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, size=(imgsz, imgsz, 3))  # sensor noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image, np.asarray(labels, dtype=np.float64).reshape(-1, 5)


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection of two boxes over the smaller one's area: 1 when one box holds the other."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if smaller else 1.0


def make_shapes_detection_dataset(
    out_dir: Path, *, train: int = 256, val: int = 64, imgsz: int = 96, seed: int = 0
) -> Path:
    """Write a YOLO-format shapes dataset under `out_dir` and return the path of its `data.yaml`.

    Layout: images/{train,val}/*.png, labels/{train,val}/*.txt (`class cx cy w h`, normalised, one line per
    shape) and data.yaml (absolute `path`, `train: images/train`, `val: images/val`,
    names 0 square, 1 circle, 2 triangle). Each imgsz x imgsz image holds 1 to 4 filled shapes of 12-45% of the
    side in a random colour on a noisy textured background; shapes may overlap a little (at most 30% of
    the smaller box). Labels are the exact tight boxes of the drawn shapes.
    Same arguments, same bytes.
    """
    import yaml

    out_dir = Path(out_dir).resolve()
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = _draw_image(rng, imgsz)
            stem = f"{split}_{i:05d}"
            image.save(image_dir / f"{stem}.png", optimize=False)
            lines = [f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for c, cx, cy, w, h in labels]
            (label_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data_yaml = out_dir / "data.yaml"
    spec = {"path": str(out_dir), "train": "images/train", "val": "images/val", "names": dict(SHAPE_NAMES)}
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data_yaml


def _offline_environment(out_dir: Path) -> None:
    """Keep Ultralytics off the network and out of the user's settings.

    Ultralytics reads both variables when it is first imported, so this only helps when it is not imported
    yet; callers that import it earlier should set YOLO_OFFLINE=1 and YOLO_CONFIG_DIR themselves.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        config_dir = out_dir / ".yolo-config"
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


# Tuned for the shapes dataset at 96 px on 2 CPU cores (30 epochs x 256 images: ~2 min, mAP50-95 ~0.55).
# The big lever is nbs (nominal batch size): Ultralytics accumulates gradients up to nbs=64 images per step,
# which leaves a short CPU run with only ~4 optimizer steps per epoch; stepping every batch trains ~4x faster.
# Mosaic at 96 px mostly shows fragments of shapes, and a short AdamW warm-up is enough from scratch.
TRAIN_DEFAULTS: dict = {
    "optimizer": "AdamW",
    "lr0": 0.002,
    "warmup_epochs": 1,
    "mosaic": 0.0,
    "close_mosaic": 0,
}


def train_tiny_yolo(
    data_yaml: Path,
    out_dir: Path,
    *,
    model_yaml: str = "yolo11n.yaml",
    epochs: int = 30,
    imgsz: int = 96,
    seed: int = 0,
    batch: int = 16,
    **train_args,
) -> Path:
    """Train an Ultralytics YOLO detector from scratch (`model_yaml`, never hub weights) on the CPU, offline.

    Runs under `out_dir/train` (overwritten), validating only after the last epoch, without plots, AMP,
    data loader workers or downloads; `train_args` override any Ultralytics training argument (see
    TRAIN_DEFAULTS for the tuned ones). Returns the best checkpoint (the last one when no best was written).
    With the defaults, on the default shapes dataset and 2 CPU cores: about 2 minutes, mAP50-95 about 0.55.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _offline_environment(out_dir)
    from ultralytics import YOLO

    args = {
        "data": str(Path(data_yaml).resolve()),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "nbs": batch,  # one optimizer step per batch (see TRAIN_DEFAULTS)
        "seed": seed,
        "deterministic": True,
        "device": "cpu",
        "workers": 0,
        "amp": False,
        "plots": False,
        "val": False,  # validate only after the final epoch
        "cache": "ram",
        "project": str(out_dir),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
        **TRAIN_DEFAULTS,
        **train_args,
    }
    YOLO(model_yaml, task="detect").train(**args)
    weights = out_dir / "train" / "weights"
    for name in ("best.pt", "last.pt"):
        if (weights / name).is_file():
            return weights / name
    raise RuntimeError(f"training finished without a checkpoint in {weights}")
