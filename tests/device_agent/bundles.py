"""Real, signed test bundles built in milliseconds: tiny ONNX models from onnx.helper, written by edgebundle.

The classifier takes a (1, 3, 8, 8) NCHW image and computes
`logits = mean over H, W of x  @ W(version) + b(version)`, so every version
answers differently and its expected output is computed here with numpy,
independently of ONNX Runtime. Each bundle carries a `health` section
(sample_input.npy, sample_outputs.npz listed in the files), like the
toolchain writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgebundle import bundle_name_for, write_bundle
from edgebundle.manifest import (
    Artifact,
    HealthCheck,
    Manifest,
    NMSParams,
    Postprocessing,
    Preprocessing,
    SourceInfo,
    TensorSpec,
    ToolchainInfo,
)

LABELS = ["cat", "dog", "bird", "fish"]
SHAPE = (1, 3, 8, 8)


def weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(version)
    return rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)


def expected_logits(x: np.ndarray, version: int) -> np.ndarray:
    w, b = weights(version)
    return x.astype(np.float32).mean(axis=(2, 3)) @ w + b


def classifier_onnx(path: Path, version: int) -> None:
    w, b = weights(version)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)


def detector_onnx(path: Path, raw: np.ndarray) -> None:
    """A 'detector' whose output is `raw` (1, 4 + classes, anchors) plus 0 * mean(x): fixed boxes, real graph."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m4"], keepdims=1),
            helper.make_node("Reshape", ["m4", "shape3"], ["m"]),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["raw", "z"], ["out"]),
        ],
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(raw.shape))],
        initializer=[
            numpy_helper.from_array(raw.astype(np.float32), "raw"),
            numpy_helper.from_array(np.zeros((1, 1, 1), dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([1, 1, 1], dtype=np.int64), "shape3"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


@dataclass(frozen=True)
class Built:
    archive: Path
    folder: Path
    manifest: Manifest
    sha256: str
    size: int


def manifest_for(
    name: str,
    version: int,
    target: str,
    runtime: str,
    artifact: Artifact,
    *,
    converter: str = "onnx.helper",
    **fields,
) -> Manifest:
    """A manifest of one artifact with a placeholder source hash; `fields` fill in the rest."""
    return Manifest(
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00+00:00",
        target=target,
        runtime=runtime,
        precision=artifact.precision,
        artifacts=[artifact],
        source=SourceInfo(kind="onnx", filename="model.onnx", sha256="0" * 64),
        toolchain=ToolchainInfo(edgectl="test", converter=converter),
        **fields,
    )


def publish(staging: Path, manifest: Manifest, private_key, out: Path) -> Built:
    from edgebundle import sha256_file

    location = write_bundle(
        staging, manifest, private_key, out, bundle_name_for(manifest.name, manifest.version, manifest.target)
    )
    return Built(
        location.archive,
        location.directory,
        location.manifest,
        sha256_file(location.archive),
        location.archive.stat().st_size,
    )


def classifier_bundle(
    root: Path,
    private_key,
    version: int,
    *,
    target: str = "cpu",
    name: str = "tiny",
    health_version: int | None = None,
    max_latency_ms: float | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Built:
    """A signed classifier bundle; `health_version` makes its sample outputs those of another version."""
    staging = root / f"stage-{name}-{version}-{target}-{health_version}-{max_latency_ms}"
    staging.mkdir(parents=True)
    classifier_onnx(staging / "model.onnx", version)
    sample = np.random.default_rng(100 + version).uniform(0, 1, size=SHAPE).astype(np.float32)
    np.save(staging / "sample_input.npy", sample)
    np.savez(staging / "sample_outputs.npz", output_0=expected_logits(sample, health_version or version))
    for rel, data in (extra_files or {}).items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    artifact = Artifact(
        path="model.onnx",
        format="onnx",
        precision="fp32",
        inputs=[TensorSpec(name="x", shape=list(SHAPE), dtype="float32", layout="NCHW")],
        outputs=[TensorSpec(name="logits", shape=[1, 4], dtype="float32")],
    )
    manifest = manifest_for(
        name,
        version,
        target,
        "onnxruntime",
        artifact,
        preprocessing=Preprocessing(layout="NCHW", color="RGB", scale=1 / 255, mean=[0.0], std=[1.0]),
        postprocessing=Postprocessing(task="classify", labels=LABELS),
        health=HealthCheck(
            sample_input="sample_input.npy",
            sample_outputs="sample_outputs.npz",
            min_cosine=0.999,
            max_latency_ms=max_latency_ms,
        ),
    )
    return publish(staging, manifest, private_key, root / "out")


def detector_bundle(
    root: Path, private_key, raw: np.ndarray, *, version: int = 1, boxes: str | None = None
) -> Built:
    staging = root / f"stage-det-{version}"
    staging.mkdir(parents=True)
    detector_onnx(staging / "model.onnx", raw)
    artifact = Artifact(
        path="model.onnx",
        format="onnx",
        precision="fp32",
        inputs=[TensorSpec(name="x", shape=[1, 3, 64, 64], dtype="float32", layout="NCHW")],
        outputs=[TensorSpec(name="out", shape=list(raw.shape), dtype="float32")],
        boxes=boxes,
    )
    manifest = manifest_for(
        "det",
        version,
        "cpu",
        "onnxruntime",
        artifact,
        preprocessing=Preprocessing(
            layout="NCHW", color="RGB", resize_mode="letterbox", mean=[0.0], std=[1.0]
        ),
        postprocessing=Postprocessing(
            task="detect", labels=["square", "circle"], nms=NMSParams(conf_threshold=0.25, iou_threshold=0.5)
        ),
    )
    return publish(staging, manifest, private_key, root / "out")
