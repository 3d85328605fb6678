"""The boundary models of `edgectl optimize`: what is asked, what is reported, what `build` can read back.

The sidecar (`<model>.pruning.json`, next to the pruned model) is the record `edgectl build` puts in the
manifest's lineage. It names the sha256 of the model it describes, so a sidecar left beside a model that
was changed afterwards is not believed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SIDECAR_SUFFIX = ".pruning.json"
SIDECAR_SCHEMA = "edgectl.pruning/1"
SPARSE_REG = 5e-3  # Torch-Pruning's group-lasso coefficient when --sparse-epochs is on (see docs/architecture.md, "Structured pruning")
METHOD = "torch-pruning DepGraph, L2 group magnitude, channels per layer"


def method_text(sparse_epochs: int, sparse_reg: float, task: str) -> str:
    """How the model was pruned, as the sidecar and the manifest's lineage say it."""
    method = f"{METHOD}, detection head kept whole" if task == "detect" else METHOD
    if not sparse_epochs:
        return method
    return f"{method}, after {sparse_epochs} epochs of group-lasso sparse training (reg {sparse_reg:g})"


class OptimizeRequest(BaseModel):
    """The CLI's `optimize` flags, validated."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prune: float = Field(gt=0.0, lt=1.0, description="Fraction of each prunable layer's channels to remove.")
    train: Path
    val: Path
    out: Path
    epochs: int = Field(default=10, ge=1, le=1000)
    max_drop: float = Field(default=1.0, ge=0.0, le=100.0)
    weights: Path | None = None
    input_shape: list[int] | None = None
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    distill: bool | None = None  # None: classifiers distil, detectors train on labels (see finetune)
    batch: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    round_to: int = Field(default=1, ge=1, le=256)
    sparse_epochs: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Epochs of group-lasso sparse training before pruning (0: none).",
    )
    sparse_reg: float = Field(default=SPARSE_REG, gt=0.0, le=1.0)
    threads: int = Field(default=1, ge=1, le=256)
    bench_runs: int = Field(default=50, ge=1, le=10000)
    val_limit: int = Field(default=5000, ge=1)
    seed: int = 0


class ModelStats(BaseModel):
    """One model's figures: FP32 ONNX size and host p50 latency in ONNX Runtime, accuracy on --val."""

    params: int
    macs: int
    model_bytes: int
    onnx_bytes: int
    latency_ms_p50: float
    metrics: dict[str, float]


class LayerChannels(BaseModel):
    layer: str
    kind: str
    before: int
    after: int


class Attempt(BaseModel):
    ratio: float
    metric: str
    before: float
    after: float
    drop_points: float
    passed: bool
    macs: int
    params: int


class PruningRecord(BaseModel):
    """The sidecar JSON beside a pruned model: how it was pruned and fine-tuned."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["edgectl.pruning/1"] = Field(default=SIDECAR_SCHEMA, alias="schema")
    model_sha256: str
    source_kind: str
    source_filename: str
    source_sha256: str
    method: str = METHOD
    ratio: float
    round_to: int
    sparse_epochs: int = 0
    sparse_reg: float | None = None
    torch_pruning: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    finetune_epochs: int
    finetune_data: str
    finetune_data_sha256: str
    distilled: bool
    metric: str
    metric_before: float
    metric_after: float
    attempts: list[Attempt] = Field(default_factory=list)

    def lineage(self) -> dict:
        """What a manifest's lineage records of the pruning (the sidecar less its file bookkeeping)."""
        return self.model_dump(include=LINEAGE_FIELDS)


LINEAGE_FIELDS = {
    "method", "ratio", "round_to", "torch_pruning", "source_sha256", "params_before", "params_after",
    "macs_before", "macs_after", "finetune_epochs", "finetune_data_sha256", "distilled", "metric",
    "metric_before", "metric_after",
}  # fmt: skip


class OptimizeReport(BaseModel):
    model: Path
    sidecar: Path
    source_kind: str
    task: str
    ratio: float
    epochs: int
    sparse_epochs: int = 0
    distilled: bool
    before: ModelStats
    after: ModelStats
    speedup: float
    layers: list[LayerChannels]
    attempts: list[Attempt]
    notes: list[str] = Field(default_factory=list)


def sidecar_path(model: Path) -> Path:
    return model.with_suffix(SIDECAR_SUFFIX)


def file_sha256(path: Path) -> str:
    from toolchain.sources import _sha256

    return _sha256(path)


def read_pruning_record(model: Path, model_sha256: str | None = None) -> PruningRecord | None:
    """The sidecar of `model` when there is one that describes exactly this file; otherwise None.

    `edgectl build` calls this with the source's hash: a missing, unreadable or stale sidecar only means
    the lineage does not say the model was pruned, never a failed build.
    """
    path = sidecar_path(Path(model))
    if not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    try:
        record = PruningRecord.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        return None
    expected = model_sha256 or file_sha256(Path(model))
    return record if record.model_sha256 == expected else None
