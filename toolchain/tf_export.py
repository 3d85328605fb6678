"""TensorFlow SavedModels for the TFLite converter, offline and cached: from ONNX, or from a Keras source.

A Keras source (`.keras`, SavedModel folder) is re-exported with a static
batch-1 signature (`keras_saved_model`); that SavedModel is both what the
converter reads and the FP32 reference every TFLite artifact is judged against.
Everything else comes through ONNX (`onnx_to_saved_model`).

Why onnx2tf from the cached ONNX model (see docs/architecture.md): every
source kind already ends as one checked ONNX model, so one TFLite path serves
all of them; onnx2tf rewrites NCHW graphs to NHWC (what XNNPACK, the GPU
delegate and NNAPI run fast) instead of wrapping them in transposes; and it
leaves the TFLite conversion and quantization to TensorFlow's own converter,
which we drive ourselves (calibration on the user's data, selective
quantization, int16 activations).

Two traps are handled here:

- onnx2tf downloads a sample image file
  (`calibration_image_sample_data_20x128x128x3_float32.npy`) for models with
  3-channel 4-D inputs unless a file of that name is in its working directory.
  It runs in a child process whose working directory holds that file, made
  from the user's calibration inputs (or mid-grey when there are none), and
  whose `requests` refuses to touch the network, so a build is offline even
  on a machine that is not.
- onnx2tf changes the process's working directory and global TF state, so it
  never runs in the build process itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgebase.deps import require, version_of
from toolchain.cache import cache_key, cached
from toolchain.errors import ExportError

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_COUNT = 20


def _cache_key(onnx_path: Path) -> str:
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return cache_key([digest, [version_of(d) for d in ("edgectl", "onnx2tf", "tensorflow", "onnx")]])


def _has_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


def _sample_inputs(calibration: np.ndarray | None, nchw_shape: list[int]) -> np.ndarray:
    """What onnx2tf may look at for its own output check: the user's inputs in NHWC, never a download."""
    if calibration is not None and calibration.ndim == 4:  # samples of (C, H, W)
        return np.ascontiguousarray(calibration[:SAMPLE_COUNT].transpose(0, 2, 3, 1), dtype=np.float32)
    _, channels, height, width = nchw_shape
    return np.full((SAMPLE_COUNT, height, width, channels), 0.5, dtype=np.float32)


def onnx_to_saved_model(onnx_path: Path, calibration: np.ndarray | None = None) -> tuple[Path, bool]:
    """Return (SavedModel directory converted from `onnx_path`, whether it came from the cache)."""
    require("onnx2tf", extra="tflite", purpose="converting ONNX to TensorFlow")
    require("tensorflow", extra="tflite", purpose="converting ONNX to TensorFlow")
    from toolchain.onnx_export import onnx_input_shape

    def make(work: Path) -> Path:
        shape = onnx_input_shape(onnx_path)
        if len(shape) == 4:
            np.save(work / SAMPLE_FILE, _sample_inputs(calibration, shape))
        out = work / "saved_model"
        private = work / "model.onnx"  # onnx2tf may rewrite its input in place (onnxsim); keep ours intact
        shutil.copyfile(onnx_path, private)
        proc = subprocess.run(
            [sys.executable, "-m", "toolchain.tf_export", str(private), str(out)],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": _import_root()},
        )
        if proc.returncode != 0 or not (out / "saved_model.pb").is_file():
            tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            raise ExportError(
                f"onnx2tf could not convert the model: {tail[-1] if tail else 'no output'}",
                hint="an op onnx2tf does not know; the full log: python -m toolchain.tf_export MODEL.onnx OUT_DIR",
            )
        for leftover in out.glob("*.tflite"):  # onnx2tf's own float files; we convert ourselves
            leftover.unlink()
        return out

    return cached(
        "saved_model", _cache_key(onnx_path), make, complete=_has_saved_model, prefix="edgectl-onnx2tf-"
    )


def keras_saved_model(source, shape: list[int]) -> tuple[Path, bool]:
    """Return (SavedModel of a Keras source with a static `shape` signature, whether it came from the cache)."""
    require("tensorflow", extra="tflite", purpose="reading a Keras model")
    from toolchain.keras_source import to_saved_model

    payload = [source.sha256, source.kind, shape, [version_of(d) for d in ("edgectl", "tensorflow", "keras")]]
    return cached(
        "saved_model",
        f"keras-{cache_key(payload)}",
        lambda work: to_saved_model(Path(source.location), shape, work / "saved_model"),
        complete=_has_saved_model,
        prefix="edgectl-keras-",
    )


def _import_root() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def _offline_guard() -> None:
    import requests

    def refuse(*_args, **_kwargs):
        raise RuntimeError("edgectl runs onnx2tf offline; it tried to download a file")

    requests.get = refuse  # type: ignore[assignment]
    requests.Session.request = refuse  # type: ignore[assignment]


def _worker(onnx_file: str, out_dir: str) -> None:
    _offline_guard()
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=onnx_file,
        output_folder_path=out_dir,
        output_signaturedefs=True,
        non_verbose=True,
        verbosity="error",
    )


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
