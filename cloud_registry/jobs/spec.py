"""What the registry hands a job's worker (`JobSpec`, spec.json) and what the worker hands back
(`JobOutcome`, outcome.json), both in the job attempt's folder. Files only: the worker may run in another
process (local runner) or on another machine that shares the jobs folder (Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry_api.retraining import EntryPoint

SPEC_FILE, OUTCOME_FILE, STATUS_FILE, LOG_FILE = "spec.json", "outcome.json", "status.json", "job.log"


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int
    attempt: int
    model: str
    parent_version: int
    new_version: int
    trigger: str = Field(description="Lineage text for `edgectl build --trigger`.")
    workdir: Path = Field(description="This attempt's folder: inputs, outputs, log, outcome.")
    entry_point: EntryPoint
    training_data: str | None
    parent_model: Path
    train_data: Path = Field(description="Feedback samples the entry point trains on (train.npz).")
    holdout_data: Path = Field(description="Held-out feedback samples, never given to the entry point.")
    labels: list[str]
    preprocessing: dict[str, Any]
    input_shape: list[int]
    targets: dict[str, str] = Field(description="target -> precision, as the parent was built.")
    parent_bundles: dict[str, Path] = Field(description="target -> the parent's .edgebundle archive.")
    max_drop: float
    build_extra_args: list[str] = Field(default_factory=list)
    sign_key: Path
    edgectl: list[str] = Field(description="argv prefix that runs the toolchain's CLI.")

    def path(self, name: str) -> Path:
        return self.workdir / name


class JobOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    error: str | None = None
    phase: str = Field(description="The phase it ended in: training, building, evaluating, done.")
    model: Path | None = Field(default=None, description="The trained model file (the new version's source).")
    model_sha256: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="What the entry point reported.")
    bundles: dict[str, Path] = Field(default_factory=dict, description="target -> the candidate's archive.")
    build: dict[str, Any] = Field(default_factory=dict, description="Per target: the build's validation.")
    evaluation: dict[str, Any] = Field(
        default_factory=dict, description="Per target: held-out top-1 of the parent and the candidate."
    )
    seconds: dict[str, float] = Field(default_factory=dict)
