"""The digits model of the retraining tests, and the drift they simulate.

`python -m tests.retraining.digits OUT` trains a small demo CNN (the demo's architecture with 8/16/32
channels, so it trains in seconds on one thread) on scikit-learn's digits, keeps its TorchScript source
and builds a signed `cpu` (INT8) bundle with `edgectl build`, lineage `sklearn:digits`.

The drift: the same real digits, rotated by 25 degrees with strokes thickened (a 3x3 maximum filter),
as a camera mounted askew with a bolder pen would see them. The model trained on upright digits drops
from about 96 % to about 40 % top-1 on them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WIDTHS = (8, 16, 32)
ROTATE_DEGREES, THICKEN = 25, 3


@dataclass(frozen=True)
class DigitsV1:
    root: Path
    model: Path  # the TorchScript source of v1 (its weights)
    archive: Path  # digits-cnn v1 for cpu
    signing_key: Path
    public_key: Path
    top1: float  # the bundle's validation top-1


def split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's 32x32 uint8 train / validation split of scikit-learn's digits."""
    from toolchain.demo import _digits_images

    return _digits_images(seed)


def shifted(images: np.ndarray) -> np.ndarray:
    """Rotated, thicker-stroked versions of 32x32 uint8 digit images."""
    from PIL import Image, ImageFilter

    out = []
    for image in images:
        picture = Image.fromarray(image).filter(ImageFilter.MaxFilter(THICKEN))
        out.append(np.asarray(picture.rotate(ROTATE_DEGREES, resample=Image.BILINEAR)))
    return np.stack(out)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def model_input(image: np.ndarray) -> np.ndarray:
    """What the agent makes of the PNG of `image`: (1, 1, 32, 32) float32 in [0, 1]."""
    return (image.astype(np.float32) / 255.0)[None, None]


def input_key(array: np.ndarray) -> bytes:
    """A lookup key for an input tensor that survives the float round trip (pixel values)."""
    return np.round(np.asarray(array, dtype=np.float32).reshape(-1) * 255.0).astype(np.uint8).tobytes()


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def make_v1(root: Path) -> DigitsV1:
    """Train and build v1 in a child process (one torch thread, nothing left in the test process)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.retraining.digits", str(root)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((root / "v1.json").read_text())
    return DigitsV1(
        root=root,
        model=Path(data["model"]),
        archive=Path(data["archive"]),
        signing_key=Path(data["signing_key"]),
        public_key=Path(data["public_key"]),
        top1=data["top1"],
    )


def _main(root: Path) -> None:
    import torch

    from edgebundle import generate_keypair
    from toolchain.demo import train_digits_model

    torch.set_num_threads(1)
    data = train_digits_model(root / "data", epochs=8, widths=WIDTHS)
    private, public = generate_keypair(root / "keys")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgectl.main",
            "build",
            str(data.model),
            "-t",
            "cpu",
            # INT8 of this small CNN runs about as fast as FP32 here (0.08 against 0.05 ms measured once):
            # the loop's tests want an INT8 parent whatever the host measures
            "--precision",
            "int8",
            "--allow-slower-int8",
            "--calib",
            str(data.calib),
            "--val",
            str(data.val),
            "--input-shape",
            "1,1,32,32",
            "--name",
            "digits-cnn",
            "--version",
            "1",
            "--out",
            str(root / "bundles"),
            "--sign-key",
            str(private),
            "--training-data",
            "sklearn:digits",
            "--bench-runs",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    bundle = json.loads(build.stdout)["bundles"][0]
    summary = {
        "model": str(data.model),
        "archive": bundle["archive"],
        "signing_key": str(private),
        "public_key": str(public),
        "top1": bundle["validation"]["artifact"]["top1"],
    }
    (root / "v1.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
