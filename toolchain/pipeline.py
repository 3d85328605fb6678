"""`edgectl build`: a list of typed stages, each wrapped once for timing, progress and the report.

```
BUILD_STAGES   plan → source
TARGET_STAGES  export → outputs → evaluation → reference            (the FP32 reference, made once)
               → convert → validate → benchmark → device checks → manifest → sign
```

Everything that can be checked before heavy work is checked first (`plan`: targets, converters,
precisions, signing key, output folder), so a typo fails in a second, not after a ten-minute export.
Each target's files are staged in a hidden folder of the output directory and published by
`edgebundle` only once complete: a failed build leaves no partial bundle. The stages themselves are
in `toolchain.stages`; adding one is a function there and a row here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgebundle.manifest import Manifest, Precision
from toolchain.stages import Stage, check, convert, prepare, seal
from toolchain.stages.state import BuildState, TargetState


class BuildRequest(BaseModel):
    """The CLI's `build` flags, validated."""

    model_config = ConfigDict(extra="forbid")

    model: str
    targets: list[str] = Field(min_length=1)
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    calib: Path | None = None
    val: Path | None = None
    max_drop: float = Field(default=1.0, ge=0.0, le=100.0)
    name: str | None = None
    version: int = Field(default=1, ge=1)
    out: Path = Path("build")
    sign_key: Path
    weights: Path | None = None
    input_shape: list[int] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    color: Literal["RGB", "BGR", "GRAY"] | None = None
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    labels: Path | None = None
    task: Literal["detect", "classify", "other"] | None = None  # None: what the model says (or other)
    calib_limit: int = Field(default=128, ge=1)
    val_limit: int = Field(default=5000, ge=1)
    bench_runs: int = Field(default=50, ge=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    palettize: Literal[4, 6, 8] | None = None
    parent_version: int | None = Field(default=None, ge=1)
    training_data: str | None = Field(default=None, max_length=1000)
    trigger: str | None = Field(default=None, max_length=100)
    int16_activations: bool = False  # TFLite: allow int16 activations (reference kernels, slower than FP32)
    allow_slower_int8: bool = False  # ship INT8 for its size even when it is not faster than FP32 here

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(d <= 0 for d in value)):
            raise ValueError("every axis of --input-shape must be a positive integer")
        return value


class TargetBuild(BaseModel):
    target: str
    precision: Precision
    bundle: Path
    archive: Path
    manifest: Manifest
    export_cached: bool
    # seconds per stage: the build's shared stages, then this target's (a reference another target
    # already made is not counted again)
    stage_seconds: dict[str, float] = Field(default_factory=dict)


class Reporter:
    """Progress callbacks; the CLI swaps in a progress bar, tests keep this silent one."""

    def stage(self, text: str) -> None:
        pass

    def advance(self, label: str, done: int, total: int) -> None:
        pass


BUILD_STAGES: tuple[Stage, ...] = (
    Stage("plan", prepare.plan, describe=lambda b: None),
    Stage("source", prepare.read_source, describe=lambda b: "reading the model"),
)

TARGET_STAGES: tuple[Stage, ...] = (
    Stage(
        "export",
        prepare.export,
        describe=prepare.describe_export,
        needed=lambda b, t: t.export_key not in b.exported,
    ),
    Stage("outputs", prepare.read_outputs, describe=lambda b, t: None),
    Stage(
        "evaluation",
        prepare.load_evaluation,
        describe=lambda b, t: "loading validation data",
        needed=lambda b, t: not b.evaluation_loaded,
    ),
    Stage(
        "reference",
        prepare.score_reference,
        describe=lambda b, t: "scoring the FP32 reference",
        needed=prepare.needs_reference,
    ),
    Stage("convert", convert.convert, describe=convert.describe),
    Stage("validate", check.validate, describe=check.describe_validate),
    Stage("benchmark", check.benchmark, describe=check.describe_benchmark),
    Stage("device_checks", check.device_check_files, describe=check.describe_device_checks),
    Stage("manifest", seal.write_manifest, describe=lambda b, t: None),
    Stage("sign", seal.sign, describe=seal.describe_sign),
)


def build(req: BuildRequest, reporter: Reporter | None = None) -> list[TargetBuild]:
    state = BuildState(req=req, reporter=reporter or Reporter())
    for stage in BUILD_STAGES:
        stage(state.reporter, state.seconds, state)
    return [_build_target(state, target) for target in state.targets]


def _build_target(state: BuildState, target: TargetState) -> TargetBuild:
    out = state.req.out
    target.workdir = Path(tempfile.mkdtemp(prefix=".edgectl-work-", dir=out))
    target.staging = Path(tempfile.mkdtemp(prefix=".edgectl-staging-", dir=out))
    try:
        for stage in TARGET_STAGES:
            stage(state.reporter, target.seconds, state, target)
    finally:
        shutil.rmtree(target.workdir, ignore_errors=True)
        if target.staging.exists():
            shutil.rmtree(target.staging, ignore_errors=True)
    location = target.location
    return TargetBuild(
        target=target.profile.name,
        precision=target.precision,
        bundle=location.directory,
        archive=location.archive,
        manifest=location.manifest,
        export_cached=target.fp32(state)[1],
        stage_seconds={**state.seconds, **target.seconds},
    )
