"""Test helpers: signed bundles made here (no toolchain), wire messages, and an API client with a token."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebundle import bundle_name_for, write_bundle
from edgebundle.manifest import (
    Artifact,
    BenchmarkReport,
    Fidelity,
    Lineage,
    Manifest,
    Postprocessing,
    Preprocessing,
    SourceInfo,
    TensorSpec,
    ToolchainInfo,
    ValidationReport,
)
from edgewire.messages import (
    DriftSummary,
    InferenceStats,
    ModelRef,
    Presence,
    Telemetry,
    UpdateStatus,
    new_message_id,
)


def make_bundle(
    out: Path,
    key: Ed25519PrivateKey,
    *,
    name: str = "digits",
    version: int = 1,
    target: str = "cpu",
    payload: bytes | None = None,
    source: str = "source-a",
    parent: int | None = None,
    top1: float = 0.95,
    p95_ms: float = 1.5,
    drift_reference: DriftSummary | None = None,
) -> Path:
    """A signed .edgebundle archive whose artifact is `payload` (any bytes: the registry never runs it)."""
    staging = out / f"staging-{name}-{version}-{target}-{time.monotonic_ns()}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(
        payload if payload is not None else f"{name}:{version}:{target}".encode()
    )
    spec = TensorSpec(name="x", shape=[1, 1, 8, 8], dtype="float32")
    manifest = Manifest(
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00Z",
        target=target,
        runtime="onnxruntime",
        precision="fp32",
        artifacts=[
            Artifact(path="model.onnx", format="onnx", precision="fp32", inputs=[spec], outputs=[spec])
        ],
        preprocessing=Preprocessing(),
        postprocessing=Postprocessing(task="classify", labels=[str(i) for i in range(10)]),
        source=SourceInfo(kind="onnx", filename="m.onnx", sha256=hashlib.sha256(source.encode()).hexdigest()),
        toolchain=ToolchainInfo(edgectl="0.1.0", converter="onnxruntime"),
        validation=ValidationReport(
            data="val",
            samples=100,
            task="classify",
            metric="top1",
            reference={"top1": 0.96},
            artifact={"top1": top1},
            drop_points=round((0.96 - top1) * 100, 3),
            max_drop_points=1.0,
            fidelity=Fidelity(cosine=0.999, max_abs_error=0.01),
            passed=True,
        ),
        benchmark=BenchmarkReport(
            runs=10,
            warmup=2,
            threads=1,
            latency_ms_p50=p95_ms * 0.8,
            latency_ms_p95=p95_ms,
            latency_ms_mean=p95_ms * 0.85,
            throughput_per_s=1000 / p95_ms,
            session_init_ms=3.0,
            peak_memory_mb=10.0,
            artifact_bytes=100,
            host="test",
        ),
        lineage=Lineage(parent_version=parent, training_data="s3://data/digits@v1", trigger="manual"),
        drift_reference=drift_reference,
    )
    location = write_bundle(staging, manifest, key, out, bundle_name_for(name, version, target))
    return location.archive


def presence(device: str, session: int, state: str = "online", fleet: str = "default", **model) -> Presence:
    return Presence(
        fleet=fleet,
        device=device,
        state=state,
        session=session,
        at=time.time(),
        agent_version="test",
        model=ModelRef(**model) if model else None,
    )


def telemetry(
    device: str,
    seq: int,
    *,
    model: str = "digits",
    version: int | None = 1,
    count: int = 100,
    errors: int = 0,
    p95: float | None = 10.0,
    confidence: list[int] | None = None,
    fleet: str = "default",
    msg_id: str | None = None,
) -> Telemetry:
    return Telemetry(
        fleet=fleet,
        device=device,
        msg_id=msg_id or new_message_id(),
        seq=seq,
        sent_at=time.time(),
        interval_s=10,
        model=ModelRef(name=model, version=version, slot="a") if version else None,
        inference=InferenceStats(
            count=count, errors=errors, latency_ms_p50=None if p95 is None else p95 / 2, latency_ms_p95=p95
        ),
        drift=DriftSummary(samples=count, confidence_hist=confidence) if confidence else None,
    )


def update_status(
    device: str,
    seq: int,
    *,
    update_id: str,
    state: str,
    to_version: int,
    from_version: int | None = None,
    model: str = "digits",
    rollout_id: int | None = None,
    fleet: str = "default",
) -> UpdateStatus:
    return UpdateStatus(
        fleet=fleet,
        device=device,
        msg_id=new_message_id(),
        seq=seq,
        sent_at=time.time(),
        update_id=update_id,
        rollout_id=rollout_id,
        model=model,
        from_version=from_version,
        to_version=to_version,
        state=state,
        slot="b",
    )
