"""The schema of a target profile. Code branches on these fields, never on a target's name."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["onnxruntime", "tflite", "tensorrt", "coreml", "tflite-micro"]
ArtifactFormat = Literal["onnx", "tflite", "onnx+tensorrt-plan", "mlpackage", "tflite-micro"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accelerator(_Frozen):
    kind: Literal["gpu", "npu", "dla", "neural-engine", "dsp"]
    name: str
    compute_capability: str | None = None
    fast_fp16: bool
    fast_int8: bool
    dla_cores: int = Field(default=0, ge=0)


class Hardware(_Frozen):
    soc: str
    cpu: str
    cpu_cores: int = Field(ge=1)
    accelerator: Accelerator | None = None


class InputConstraints(_Frozen):
    static_shapes: bool = True
    layouts: list[Literal["NCHW", "NHWC"]] = Field(default_factory=lambda: ["NCHW", "NHWC"])
    max_input_pixels: int | None = None


class TargetProfile(_Frozen):
    name: str
    title: str
    description: str
    runtime: Runtime
    artifact_format: ArtifactFormat
    default_precision: Precision
    precisions: list[Precision] = Field(min_length=1)
    opset_ceiling: int = Field(
        ge=7, description="Highest ONNX opset the target's converter or runtime accepts."
    )
    threads: int | None = Field(default=None, ge=1, description="Inference threads; None = all host cores.")
    hardware: Hardware
    memory_mb: int | None = Field(default=None, ge=0)
    storage_mb: int | None = Field(default=None, ge=0)
    flash_kb: int | None = Field(default=None, ge=0)
    sram_kb: int | None = Field(default=None, ge=0)
    input_constraints: InputConstraints = Field(default_factory=InputConstraints)
    runtime_versions: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    references: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            raise ValueError("name must be lowercase letters, digits and '-'")
        return value

    @model_validator(mode="after")
    def _default_supported(self) -> TargetProfile:
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"default_precision {self.default_precision} is not in precisions {self.precisions}"
            )
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
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
