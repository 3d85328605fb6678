"""Bodies of the retraining loop's API: the retraining policy, sample settings and labels, jobs, drift.

The policy is the one document a model owner writes (YAML or JSON, `edgectl retrain policy set`);
docs/retraining.md describes every field. Like the rest of the admin API, bodies forbid unknown
fields, so a typo in a policy is an error, not a silently ignored setting. Over 400 lines on purpose:
the policy is one document, and its fields are declared here in the order docs/retraining.md gives them.
"""

from __future__ import annotations

import itertools
import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgewire.device_api import SampleUploadSettings
from registry_api.schemas import GROUP_RE, GatePolicy, Selection

CALLABLE_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
SAMPLE_ID_RE = r"^[0-9a-f]{32}$"
# What a training command's arguments may name: {parent_model}, {samples}, ...
COMMAND_PLACEHOLDERS = frozenset(
    {"job", "parent_model", "samples", "out_dir", "training_data", "model", "parent_version", "new_version"}
)
# Flags of `edgectl build` the job sets itself; a policy's build.extra_args may not override them.
RESERVED_BUILD_FLAGS = frozenset(
    {
        "-t",
        "--target",
        "--name",
        "--version",
        "--out",
        "--sign-key",
        "--json",
        "--parent-version",
        "--trigger",
        "--training-data",
        "--precision",
    }
)
DriftMetric = Literal["score", "psi_confidence", "psi_class", "mean_shift_z"]
JobState = Literal["queued", "running", "succeeded", "rejected", "failed", "cancelled"]
ACTIVE_JOB_STATES = ("queued", "running")
TriggerKind = Literal["manual", "drift", "labeled_samples", "schedule"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- the retraining policy


class EntryPoint(_Body):
    """The model owner's training code: a Python callable or a command, run once per job."""

    callable: str | None = Field(
        default=None,
        pattern=CALLABLE_RE,
        description="package.module:function, called with a TrainingJob (cloud_registry.jobs.contract).",
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="argv; {parent_model}, {samples}, {out_dir}, {job} ... are filled in. It writes "
        "{out_dir}/result.json.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the callable as job.params (and in job.json)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (no secrets).")
    timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _one_kind(self) -> EntryPoint:
        if (self.callable is None) == (self.command is None):
            raise ValueError("give exactly one of callable (package.module:function) and command (argv list)")
        for arg in self.command or []:
            for _, name, _, _ in string.Formatter().parse(arg):
                if name is not None and name not in COMMAND_PLACEHOLDERS:
                    raise ValueError(
                        f"command placeholder {{{name}}} is unknown; known: {', '.join(sorted(COMMAND_PLACEHOLDERS))}"
                    )
        return self

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Z_][A-Z0-9_]{0,63}$", key):
                raise ValueError(f"environment variable name {key!r}: uppercase letters, digits and '_'")
        return value


class DriftTrigger(_Body):
    """Retrain when a version's drift stays above a threshold in a device group for a sustained time."""

    metric: DriftMetric = Field(
        default="score",
        description="score = the input drift (psi_confidence); or one of the statistics. A skewed mix of "
        "predicted classes (psi_class) alone is not drift unless prediction_mix says so.",
    )
    threshold: float = Field(default=0.25, gt=0, le=1e9, description="Fires when the metric is above it.")
    sustained_s: float = Field(
        default=600.0, ge=0, le=30 * 86400, description="Every score for this long above the threshold."
    )
    min_samples: int = Field(
        default=100, ge=1, le=10**9, description="Pooled inferences a score needs before it counts."
    )
    prediction_mix: bool = Field(
        default=False,
        description="Also fire on prediction-mix drift: the trigger watches max(metric, psi_class). Off "
        "by default: a camera that mostly sees one class shifts psi_class without any drift of its inputs.",
    )


class LabeledSamplesTrigger(_Body):
    """Retrain when this many labeled samples came in since the data of the last job."""

    min_new: int = Field(ge=1, le=10**7)


class ScheduleTrigger(_Body):
    """Retrain every `every_s` seconds (counted in slots of that length since the epoch)."""

    every_s: float = Field(ge=1, le=366 * 86400)


class Triggers(_Body):
    drift: DriftTrigger | None = None
    labeled_samples: LabeledSamplesTrigger | None = None
    schedule: ScheduleTrigger | None = None


class EvaluationPolicy(_Body):
    """The held-out comparison of a candidate with its parent."""

    holdout_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="Share of labeled samples held out (by a hash of the sample id)."
    )
    min_holdout: int = Field(
        default=10, ge=1, le=10**7, description="A job needs this many held-out samples."
    )
    tolerance_points: float = Field(
        default=0.0, ge=0, le=100, description="A candidate may be this many top-1 points below its parent."
    )
    min_parent_agreement: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="The labels are refused when the parent agrees with them on this many held-out points "
        "or fewer; None: chance (100 / classes). 0 turns the check off.",
    )
    max_label_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The labels are refused when one class holds more than this share of them and the "
        "parent predicts that class for less than half that share. 1 turns the check off.",
    )


class BuildPolicy(_Body):
    """How the job builds the candidate: `edgectl build`, with the parent's targets and precisions."""

    max_drop: float | None = Field(
        default=None, ge=0, le=100, description="Accuracy gate in points; None: the parent's own gate."
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=32, description="More `edgectl build` flags."
    )

    @field_validator("extra_args")
    @classmethod
    def _not_reserved(cls, value: list[str]) -> list[str]:
        for arg in value:
            if arg.split("=", 1)[0] in RESERVED_BUILD_FLAGS:
                raise ValueError(f"build flag {arg} is set by the job itself")
        return value


class RetrainGates(GatePolicy):
    """A rollout's gates, as for any rollout, but for the confidence shift: off (100) unless set, because a
    model retrained for drifted data changes its confidence on purpose."""

    max_confidence_psi: float = Field(
        default=100.0,
        ge=0,
        le=100,
        description="PSI of the confidence histograms, after vs before (fires at >).",
    )


class CanaryChecks(_Body):
    """How the candidate behaves in the field against its parent, on the same devices (their telemetry on
    the parent before the update, on the candidate since): judged with the rollout's own evidence rules
    (min_device_inferences, min_baked_s, min_devices); a crossed check rolls the rollout back."""

    max_prediction_mix_psi: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="PSI of the predicted-class mix, candidate vs parent (fires at >): a model that "
        "answers one of ten evenly predicted classes for everything scores 8.3. 100: off.",
    )
    max_confidence_drop: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Mean top-class confidence of the parent minus the candidate's (fires at >). 1: off.",
    )


class RolloutPolicy(_Body):
    """The canary rollout of an accepted candidate, through the normal waves and gates."""

    enabled: bool = True
    waves: list[float] = Field(default_factory=lambda: [10.0, 100.0], min_length=1, max_length=20)
    gates: RetrainGates = Field(default_factory=lambda: RetrainGates())
    canary: CanaryChecks = Field(default_factory=lambda: CanaryChecks())
    selection: Selection | None = Field(
        default=None, description="Devices to roll out to; None: the policy's groups (or the whole fleet)."
    )

    @field_validator("waves")
    @classmethod
    def _waves(cls, waves: list[float]) -> list[float]:
        if any(not (0 < w <= 100) for w in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
            raise ValueError("waves are cumulative percentages, strictly increasing, each in (0, 100]")
        if waves[-1] != 100:
            raise ValueError("the last wave must be 100")
        return waves


class RetrainingPolicy(_Body):
    """When to retrain a model, with what, and what happens to the result."""

    enabled: bool = Field(default=True, description="Off: no automatic job (manual runs still work).")
    entry_point: EntryPoint
    training_data: str | None = Field(
        default=None,
        max_length=1000,
        description="The original training data reference; None: the parent version's lineage.",
    )
    groups: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Device groups whose drift and samples count; [] all.",
    )
    triggers: Triggers = Field(default_factory=Triggers)
    min_labeled_samples: int = Field(
        default=20, ge=1, le=10**8, description="No job (of any trigger) with fewer labeled samples."
    )
    cooldown_s: float = Field(
        default=3600.0, ge=0, le=366 * 86400, description="No automatic job this soon after the last one."
    )
    evaluation: EvaluationPolicy = Field(default_factory=EvaluationPolicy)
    build: BuildPolicy = Field(default_factory=BuildPolicy)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if not re.match(GROUP_RE, group):
                raise ValueError(f"group {group!r}: 1-63 lowercase letters, digits or '-'")
        return sorted(set(value))


class PolicyStatus(BaseModel):
    labeled_samples: int
    new_labeled_samples: int = Field(description="Labeled since the data of the last job.")
    active_job: int | None
    drift: list[dict[str, Any]] = Field(
        description="Per version and group: the newest score, above since when."
    )
    blocked: str | None = Field(
        default=None, description="Why no job is queued although a trigger fires (too few labeled samples)."
    )


class PolicyInfo(BaseModel):
    model: str
    revision: int
    created_at: float
    updated_at: float
    updated_by: str
    policy: RetrainingPolicy
    status: PolicyStatus | None = None


# --------------------------------------------------------------------------- samples and labels


class GroupSampling(BaseModel):
    group: str
    samples: SampleUploadSettings
    updated_at: float | None
    updated_by: str | None


class SampleInfo(BaseModel):
    sample_id: str
    device: str | None
    group: str
    model_version: int
    received_at: float
    captured_at: float
    confidence: float
    predicted_class: int
    predicted_label: str | None
    layout: str | None
    shape: list[int]
    input_sha256: str
    label: int | None
    label_name: str | None
    labeled_at: float | None
    label_source: str | None


class LabelItem(_Body):
    sample_id: str = Field(pattern=SAMPLE_ID_RE)
    label: str | int = Field(description="A class name of the model, or its index.")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError("a class index is 0 or more")
        if isinstance(value, str) and not (0 < len(value) <= 128):
            raise ValueError("a class name is 1-128 characters")
        return value


class LabelUpload(_Body):
    labels: list[LabelItem] = Field(min_length=1, max_length=100_000)
    source: str | None = Field(default=None, max_length=64, description="Who labeled: a person, a system.")


class LabelResult(BaseModel):
    labeled: int = Field(description="Samples that had no label and have one now.")
    changed: int = Field(description="Samples whose label changed.")
    unchanged: int
    total_labeled: int = Field(description="Labeled samples of the model now.")


class SourceStored(BaseModel):
    """A version's source model, stored for the retraining jobs that start from it."""

    model: str
    version: int
    source_sha256: str
    size: int
    stored_bytes: bool = Field(
        description="Whether the blob store added the file (False: it held these bytes)."
    )


class DatasetInfo(BaseModel):
    number: int
    created_at: float
    train_samples: int
    holdout_samples: int
    train_sha256: str
    holdout_sha256: str
    groups: list[str]


# --------------------------------------------------------------------------- jobs and drift


class ManualRetrain(_Body):
    parent_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    reason: str | None = Field(default=None, max_length=500)


class JobInfo(BaseModel):
    id: int
    model: str
    state: JobState
    phase: str | None
    trigger: TriggerKind
    trigger_details: dict[str, Any]
    parent_version: int
    new_version: int | None
    attempt: int
    runner: str | None
    policy_revision: int
    created_at: float
    created_by: str
    started_at: float | None
    finished_at: float | None
    dataset: DatasetInfo | None
    evaluation: dict[str, Any] = Field(description="Held-out top-1 per target: parent and candidate.")
    outcome: dict[str, Any]
    reason: str | None
    rollout_id: int | None


class DriftPoint(BaseModel):
    model_version: int
    group: str
    at: float
    window_s: float
    devices: int
    samples: int
    psi_confidence: float
    psi_class: float = Field(description="Prediction-mix drift: reported, not a trigger unless asked for.")
    mean_shift_z: float
    score: float = Field(description="Input drift: psi_confidence (what a drift trigger watches by default).")
