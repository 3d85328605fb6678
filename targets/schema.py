"""The schema of a target profile. Code branches on these fields, never on a target's name.

Imports pydantic and the stdlib only: the device agent reads profiles too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgebase.ids import is_slug
from targets.options import OPTIONS_FOR_RUNTIME, RuntimeOptions
from targets.runtimes import RUNTIME_NAMES, RUNTIMES

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal[RUNTIME_NAMES]  # type: ignore[valid-type]  # the rows of targets/runtimes.py
ArtifactFormat = Literal["onnx", "tflite", "onnx+tensorrt-plan", "mlpackage", "tflite-micro"]
Layout = Literal["NCHW", "NHWC"]

# The artifact each runtime loads. A profile that pairs them differently is a typo, not a new target.
ARTIFACT_FOR_RUNTIME: dict[str, str] = {row.name: row.artifact_format for row in RUNTIMES.values()}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accelerator(_Frozen):
    """The device's inference accelerator, as the converters and build plans need to know it."""

    kind: Literal["gpu", "npu", "dla", "neural-engine", "dsp"]
    name: str
    compute_capability: str | None = Field(default=None, description="CUDA compute capability, e.g. '5.3'.")
    fast_fp16: bool = Field(description="FP16 runs faster than FP32 on this accelerator.")
    fast_int8: bool = Field(description="INT8 runs faster than FP16 (DP4A, tensor cores, INT8 NPU paths).")
    dla_cores: int = Field(default=0, ge=0, description="NVIDIA deep-learning accelerator cores.")


class Hardware(_Frozen):
    soc: str
    cpu: str
    cpu_cores: int = Field(ge=1)
    accelerator: Accelerator | None = None


class InputConstraints(_Frozen):
    static_shapes: bool = True
    layouts: list[Layout] = Field(default_factory=lambda: ["NCHW", "NHWC"], min_length=1)
    max_input_pixels: int | None = Field(default=None, ge=1)


class TargetProfile(_Frozen):
    """One kind of device: what runs there, in which format and precision, within which budgets."""

    name: str = Field(description="Lowercase letters, digits and '-'; equals the YAML file's stem.")
    title: str
    description: str
    runtime: Runtime
    artifact_format: ArtifactFormat
    default_precision: Precision
    precisions: list[Precision] = Field(min_length=1, description="Supported precisions.")
    opset_ceiling: int = Field(
        ge=7, description="Highest ONNX opset the target's converter or runtime accepts."
    )
    threads: int | None = Field(default=None, ge=1, description="Inference threads; None = all host cores.")
    hardware: Hardware
    # Budgets. memory_mb is the RAM the model and runtime may use (the board's RAM for SBCs).
    memory_mb: int | None = Field(default=None, ge=0)
    storage_mb: int | None = Field(default=None, ge=0)
    flash_kb: int | None = Field(default=None, ge=0)
    sram_kb: int | None = Field(default=None, ge=0)
    input_constraints: InputConstraints = Field(default_factory=InputConstraints)
    runtime_versions: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict, description="Runtime-specific converter settings.")
    references: list[str] = Field(
        default_factory=list, description="Datasheets and docs the facts come from."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_slug(value):
            raise ValueError(
                "must be 1-63 lowercase letters, digits and '-', starting with a letter or digit"
            )
        return value

    @field_validator("precisions")
    @classmethod
    def _unique_precisions(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a precision twice: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TargetProfile:
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"default_precision {self.default_precision} is not in precisions {self.precisions}"
            )
        expected = ARTIFACT_FOR_RUNTIME[self.runtime]
        if self.artifact_format != expected:
            raise ValueError(
                f"runtime {self.runtime} loads artifact_format {expected!r}, not {self.artifact_format!r}"
            )
        if self.runtime == "tflite-micro" and (self.flash_kb is None or self.sram_kb is None):
            raise ValueError("a tflite-micro target needs flash_kb and sram_kb budgets")
        try:
            OPTIONS_FOR_RUNTIME[self.runtime].model_validate(self.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            known = ", ".join(OPTIONS_FOR_RUNTIME[self.runtime].model_fields)
            raise ValueError(
                f"options.{where}: {first['msg']} (a {self.runtime} profile's options: {known})"
            ) from None
        return self

    def runtime_options(self) -> RuntimeOptions:
        """`options` as its runtime's typed model (targets/options.py), defaults filled in."""
        return OPTIONS_FOR_RUNTIME[self.runtime].model_validate(self.options)

    def summary(self) -> dict[str, Any]:
        """A flat row for `edgectl targets` (table and --json)."""
        return {
            "name": self.name,
            "runtime": self.runtime,
            "artifact_format": self.artifact_format,
            "default_precision": self.default_precision,
            "precisions": list(self.precisions),
            "memory_mb": self.memory_mb,
            "storage_mb": self.storage_mb,
            "flash_kb": self.flash_kb,
            "sram_kb": self.sram_kb,
            "threads": self.threads,
        }
