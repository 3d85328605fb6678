"""What a profile's `options:` may say, per runtime: one typed model each, so a mistyped key fails at load.

`TargetProfile` checks its `options` against the model of its runtime (`OPTIONS_FOR_RUNTIME`) and keeps
the mapping as written (`edgectl targets --json` shows it unchanged); code reads the typed form,
`profile.runtime_options()`, whose defaults are the ones below. A key is here because code reads
it, or, for the board facts of microcontrollers and single-board computers, because it documents
the board the profile was measured for; each says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Delegate = Literal["gpu", "nnapi", "xnnpack"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_budget_ms: float | None = Field(
        default=None,
        gt=0,
        description="The target's default for `build --latency-budget-ms` (read by the build).",
    )


class OnnxRuntimeOptions(_Options):
    """ONNX Runtime on a host CPU: nothing to choose; the build's flags say the rest."""


class TFLiteOptions(_Options):
    delegates: list[Delegate] = Field(
        default_factory=lambda: ["xnnpack"],
        description="Delegates the device offers, best first (read by `edgectl export android`).",
    )
    companion_artifacts: list[Literal["gpu-fp16", "ort"]] = Field(
        default_factory=list,
        description="Extra artifacts built beside the primary one (read by the converter).",
    )
    app_download_limit_mb: float = Field(
        default=200, gt=0, description="The app-size check of `edgectl export android`."
    )
    ram_variant_gb: int | None = Field(
        default=None, gt=0, description="Board fact: the RAM of the board measured."
    )


class TensorRTOptions(_Options):
    workspace_mb: int = Field(
        default=1024, gt=0, description="TensorRT's builder workspace (read by edgetrt.plan)."
    )
    use_dla: bool = Field(default=False, description="Build for a DLA core (read by edgetrt.plan).")
    dla_core: int = Field(default=0, ge=0, description="Which DLA core, with use_dla.")
    allow_gpu_fallback: bool = Field(
        default=True,
        description="With use_dla: layers the DLA cannot run go to the GPU; False makes such a model fail to build.",
    )


class CoreMLOptions(_Options):
    minimum_deployment_target: str = Field(
        default="iOS16", description="Core ML's deployment target (checked by the converter)."
    )
    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = "ALL"
    convert_to: Literal["mlprogram"] = Field(
        default="mlprogram", description="edgectl builds ML Programs only."
    )
    on_demand_guidance_mb: float = Field(
        default=100, gt=0, description="Above this, `edgectl export ios` advises on-demand delivery."
    )


class MicroOptions(_Options):
    flash_reserved_kb: int = Field(
        default=0, ge=0, description="Flash the firmware keeps (read by the fit report)."
    )
    sram_reserved_kb: int = Field(
        default=0, ge=0, description="RAM the firmware keeps (read by the fit report)."
    )
    reserved_note: str = Field(
        default="reserved by the firmware", description="What the reservation is, in the report."
    )
    # Board facts, for the reader of the profile and the fit report's context; no code decides on them.
    cpu_mhz: int | None = Field(default=None, gt=0)
    module: str | None = None
    kernels: str | None = None
    psram_kb: int | None = Field(default=None, ge=0)
    psram_type: str | None = None
    sram1_kb: int | None = Field(default=None, ge=0)
    sram2_kb: int | None = Field(default=None, ge=0)
    itcm_kb: int | None = Field(default=None, ge=0)
    external_sdram_kb: int | None = Field(default=None, ge=0)
    external_qspi_flash_kb: int | None = Field(default=None, ge=0)


RuntimeOptions = OnnxRuntimeOptions | TFLiteOptions | TensorRTOptions | CoreMLOptions | MicroOptions

OPTIONS_FOR_RUNTIME: dict[str, type[_Options]] = {
    "onnxruntime": OnnxRuntimeOptions,
    "tflite": TFLiteOptions,
    "tensorrt": TensorRTOptions,
    "coreml": CoreMLOptions,
    "tflite-micro": MicroOptions,
}
