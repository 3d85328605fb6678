"""onnx2tf runs offline: it gets the user's inputs as its sample file and cannot reach the network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolchain import tf_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rgb_onnx(tmp_path_factory) -> Path:
    """A small 3-channel conv net: the kind of input onnx2tf wants to download sample images for."""
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    path = tmp_path_factory.mktemp("rgb") / "rgb.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(path), opset_version=17, dynamo=False)
    return path


def test_sample_file_is_the_users_calibration_in_nhwc():
    calibration = np.random.default_rng(0).random((30, 3, 16, 12), dtype=np.float32)
    samples = tf_export._sample_inputs(calibration, [1, 3, 16, 12])
    assert samples.shape == (tf_export.SAMPLE_COUNT, 16, 12, 3)
    np.testing.assert_array_equal(samples[0], calibration[0].transpose(1, 2, 0))
    grey = tf_export._sample_inputs(None, [1, 3, 16, 12])
    assert grey.shape == (tf_export.SAMPLE_COUNT, 16, 12, 3) and np.all(grey == 0.5)


def test_rgb_model_converts_offline_and_is_cached(rgb_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECTL_CACHE_DIR", str(tmp_path / "cache"))
    calibration = np.random.default_rng(1).random((8, 3, 24, 24), dtype=np.float32)
    saved_model, cached = tf_export.onnx_to_saved_model(rgb_onnx, calibration)
    assert not cached and (saved_model / "saved_model.pb").is_file()
    assert not list(saved_model.glob("*.tflite"))  # onnx2tf's own float files are not kept
    again, cached = tf_export.onnx_to_saved_model(rgb_onnx, calibration)
    assert (cached, again) == (True, saved_model), list(saved_model.parent.iterdir())

    from toolchain.runners import open_runner

    runner = open_runner("tensorflow", saved_model)
    assert runner.input_shape == [1, 24, 24, 3]  # NHWC


def test_without_the_sample_file_onnx2tf_would_download_and_the_guard_stops_it(rgb_onnx, tmp_path):
    """The trap is real: in an empty working directory onnx2tf reaches for the network, and is refused."""
    root = str(Path(tf_export.__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "toolchain.tf_export", str(rgb_onnx), str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "edgectl runs onnx2tf offline; it tried to download a file" in proc.stderr + proc.stdout
