"""`edgectl demo`: the embedded default, needing no download.

Trains a small CNN on the handwritten digits bundled with scikit-learn
(1,797 real 8x8 scans, upscaled to 32x32 grayscale), writes the model as
TorchScript, a calibration image folder and a labeled validation folder, then
runs the very code path of `edgectl build` for every target whose converter
is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
SCAN_SIZE = 8  # the scans' native resolution: no resampling at this size
WIDTHS = (32, 64, 128)  # channels of the three conv stages
CALIBRATION_IMAGES = 128
VALIDATION_FRACTION = 0.3


@dataclass
class DemoData:
    model: Path
    calib: Path
    val: Path
    val_accuracy: float


def _digits_images(seed: int, size: int = IMAGE_SIZE):
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    if size == SCAN_SIZE:
        images = pixels
    else:
        images = np.stack(
            [np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC)) for p in pixels]
        )
    return train_test_split(
        images, digits.target, test_size=VALIDATION_FRACTION, stratify=digits.target, random_state=seed
    )


def _make_model(widths: tuple[int, int, int] = WIDTHS):
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    first, second, third = widths
    return nn.Sequential(
        *block(1, first),
        *block(first, first),
        nn.MaxPool2d(2),
        *block(first, second),
        *block(second, second),
        nn.MaxPool2d(2),
        *block(second, third),
        *block(third, third),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(third, 10),
    ), torch


def train_digits_model(
    out: Path,
    *,
    epochs: int = 12,
    seed: int = 0,
    progress=None,
    image_size: int = IMAGE_SIZE,
    widths: tuple[int, int, int] = WIDTHS,
) -> DemoData:
    """Train the demo CNN and write model, calibration folder and validation folder under `out`.

    `image_size` and `widths` make smaller variants of the same network: at the scans' native 8x8
    and (8, 16, 32) channels it is the microcontroller reference model (`toolchain.backends.tflite_micro.samples`).
    """
    from PIL import Image

    x_train, x_val, y_train, y_val = _digits_images(seed, image_size)
    model, torch = _make_model(widths)
    torch.manual_seed(seed)
    to_tensor = lambda a: torch.from_numpy(a.astype(np.float32)[:, None] / 255.0)  # noqa: E731
    xt, yt = to_tensor(x_train), torch.from_numpy(y_train.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    shift = 2 * image_size // IMAGE_SIZE  # 2 pixels at 32x32; none at 8x8, where a pixel is an eighth
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            batch = xt[idx]
            # small random shifts: the scans are centred, real inputs are not
            dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(batch), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            progress("training the digits CNN", epoch + 1, epochs)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(to_tensor(x_val)).argmax(1).numpy() == y_val).mean())

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "digits_cnn.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, image_size, image_size)), str(model_path))
    calib_dir, val_dir = out / "calib", out / "val"
    rng = np.random.default_rng(seed)
    for index in rng.choice(len(x_train), CALIBRATION_IMAGES, replace=False):
        calib_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x_train[index]).save(calib_dir / f"train_{index:04d}.png")
    for index, (image, label) in enumerate(zip(x_val, y_val, strict=True)):
        folder = val_dir / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"val_{index:04d}.png")
    return DemoData(model_path, calib_dir, val_dir, round(100 * accuracy, 2))
