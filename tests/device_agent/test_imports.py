"""The agent stays light: never torch, tensorflow, the toolchain or the registry; the CLI starts without numpy."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import REPO

FORBIDDEN = {
    "torch", "torchvision", "tensorflow", "tf_keras", "keras", "jax", "ultralytics", "onnx", "onnx2tf",
    "toolchain", "cloud_registry", "mobile_export", "fastapi", "sqlalchemy", "sklearn", "matplotlib", "cv2",
}  # fmt: skip


def modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def test_a_serving_agent_imports_nothing_heavy(tmp_path, signing):
    built = classifier_bundle(tmp_path, signing.private, 1)
    code = f"""
import numpy as np
import device_agent.agent, device_agent.cli, device_agent.http_api, device_agent.input_loop
from device_agent.health import check_health
from device_agent.metrics import InferenceMetrics
from device_agent.mqtt_link import BrokerSettings, MqttLink
from device_agent.pipeline import Pipeline
from device_agent.runtimes import SessionOptions
from device_agent.system import SystemProbe
from edgebundle import read_manifest
from pathlib import Path
folder = Path({str(built.folder)!r})
pipeline = Pipeline(folder, read_manifest(folder), "a", SessionOptions(), InferenceMetrics())
pipeline.infer_tensors([np.zeros((1, 3, 8, 8), np.float32)])
assert check_health(pipeline, 1).passed
SystemProbe().sample()
import paho.mqtt.client, httpx, PIL.Image
"""
    loaded = modules_after(code)
    assert "onnxruntime" in loaded and "paho" in loaded, "the probe really ran the agent's code"
    assert not loaded & FORBIDDEN, loaded & FORBIDDEN


def test_the_command_line_starts_without_numpy_or_a_runtime():
    loaded = modules_after("import device_agent.cli as cli\ncli.build_parser()")
    assert not loaded & {
        "numpy",
        "onnxruntime",
        "ai_edge_litert",
        "paho",
        "httpx",
        "PIL",
        "psutil",
        *FORBIDDEN,
    }
