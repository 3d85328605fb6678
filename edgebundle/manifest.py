"""The bundle manifest: the one contract between the toolchain, the device agent and the registry.

Only pydantic and the stdlib are imported here, because the device agent loads
this module on small devices. Every model forbids unknown fields, so a
manifest written by a newer schema is rejected loudly rather than half-read. Over 400 lines on
purpose: one file is one schema version of the bundle format, read whole when it changes.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from edgebase.ids import is_name

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"

Precision = Literal["fp32", "fp16", "int8"]
Layout = Literal["NCHW", "NHWC", "NC", "other"]
ColorOrder = Literal["RGB", "BGR", "GRAY"]
Task = Literal["classify", "detect", "other"]
Gate = Literal["labels", "fp32-detections", "top1-agreement", "output-cosine"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Confidence histograms (DriftSummary) have this many equal bins over [0, 1].
CONFIDENCE_BINS = 10


class _Model(BaseModel):
    # NaN or infinity in a report is a bug upstream; refuse it here rather than sign it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ONNX Runtime's names for tensor element types, as the numpy dtype names a TensorSpec holds.
# The host runners, the export checks and the agent read ONNX Runtime's sessions through this one map.
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class TensorSpec(_Model):
    """One input or output tensor of an artifact, exactly as the runtime sees it."""

    name: str
    shape: list[int] = Field(description="Static shape; -1 marks a dynamic axis.")
    dtype: Literal["float32", "float16", "int8", "uint8", "int32", "int64"]
    quantization: QuantParams | None = Field(
        default=None, description="Scale and zero point when the tensor itself is integer."
    )
    layout: Layout | None = Field(
        default=None, description="Axis order of an image tensor as this artifact takes it (NCHW or NHWC)."
    )


class QuantParams(_Model):
    scale: float
    zero_point: int


class Preprocessing(_Model):
    """How to turn an image into the model's input: x = (pixel * scale - mean) / std, per channel.

    `input` "tensor" means the model takes something other than an image (token ids, features):
    the caller feeds the tensor as the artifact's input spec says, and the image fields do not apply.
    """

    input: Literal["image", "tensor"] = "image"
    layout: Layout = "NCHW"
    color: ColorOrder = "RGB"
    resize: tuple[int, int] | None = Field(default=None, description="(height, width) fed to the model.")
    resize_mode: Literal["stretch", "letterbox"] = "stretch"
    letterbox_fill: int = 114
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, value: list[float]) -> list[float]:
        if any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value

    @model_serializer(mode="wrap")
    def _image_fields_only_for_images(self, handler):
        """A tensor input writes no image fields: layout, color, resize, scale, mean and std mean nothing there."""
        data = handler(self)
        return {"input": "tensor"} if self.input == "tensor" else data


class NMSParams(_Model):
    conf_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    max_detections: int = Field(default=300, gt=0)
    output_format: Literal["ultralytics"] = Field(
        default="ultralytics",
        description="Layout of the raw output: (batch, 4 + classes, anchors), boxes as cx, cy, w, h in pixels.",
    )


class Postprocessing(_Model):
    task: Task = "other"
    labels: list[str] = Field(default_factory=list)
    nms: NMSParams | None = None


class Artifact(_Model):
    path: str
    role: str = Field(default="model", description="What the file is for, e.g. 'model', 'gpu', 'cpu'.")
    format: str = Field(description="Artifact format, as in the target profile (onnx, tflite, ...).")
    precision: Precision
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    validation: ValidationReport | None = Field(default=None, description="This artifact against FP32.")
    benchmark: BenchmarkReport | None = Field(default=None, description="This artifact on the build host.")
    boxes: Literal["pixels", "normalized"] | None = Field(
        default=None,
        description="A detector's box rows (cx, cy, w, h): input pixels, or normalized to 0..1 by the input "
        "width and height (TFLite detectors, Ultralytics' convention); None for other tasks.",
    )


class FileEntry(_Model):
    path: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_RE.match(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file path must be relative and normalised: {value!r}")
        return value


class SourceInfo(_Model):
    kind: str = Field(
        description="onnx, torchscript, torch-export, torch-entrypoint, ultralytics, keras, saved-model"
    )
    filename: str
    sha256: str


class ToolchainInfo(_Model):
    edgectl: str
    converter: str
    versions: dict[str, str] = Field(default_factory=dict, description="Versions of the libraries used.")


class Fidelity(_Model):
    cosine: float
    max_abs_error: float
    top1_agreement: float | None = None


class LayerRepair(_Model):
    method: Literal["keep-float", "decode-tail-float", "int16-activations", "none"] = Field(
        default="keep-float",
        description="keep-float: the listed layers (and a detector's decode tail) stay in float; "
        "decode-tail-float: only a detector's decode tail stays in float; int16-activations: INT8 weights "
        "with int16 activations (only when asked for); none: no repair was needed, or none passed the gate "
        "(the report's `passed` says which).",
    )
    layers_kept_float: list[str]
    candidates_ranked: int
    attempts: list[dict[str, float | int | str]] = Field(default_factory=list)
    decode_tail_float: list[str] = Field(
        default_factory=list,
        description="A detector's decode-tail ops (after its last feature maps) kept in float by rule, not ranked.",
    )
    activation_bits: Literal[8, 16] = Field(default=8, description="Bits of the quantized activations.")
    p50_vs_fp32: float | None = Field(
        default=None,
        description="Host p50 latency of the shipped artifact over its runtime's FP32 artifact, measured in one "
        "process with the runs interleaved; None where the runtime does not run on the build host.",
    )


class ValidationReport(_Model):
    data: Literal["val", "calib"] = Field(description="Which data the figures come from.")
    samples: int
    task: Task
    metric: str | None = Field(default=None, description="Task metric gated on: top1 or mAP50-95.")
    reference: dict[str, float] = Field(default_factory=dict, description="Task metrics of the FP32 source.")
    artifact: dict[str, float] = Field(default_factory=dict, description="Task metrics of this artifact.")
    drop_points: float | None = Field(default=None, description="Reference minus artifact, in points.")
    max_drop_points: float
    fidelity: Fidelity
    passed: bool
    gate: Gate | None = Field(
        default=None,
        description="What decided `passed`: labels (the task metric on labeled --val data), fp32-detections "
        "(a detector without labels: mAP50-95 against the FP32 model's own detections on the calibration "
        "images), top1-agreement (a classifier without labels) or output-cosine (other models).",
    )
    repair: LayerRepair | None = None
    notes: list[str] = Field(default_factory=list)


class BenchmarkReport(_Model):
    runs: int
    warmup: int
    threads: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_mean: float
    throughput_per_s: float
    session_init_ms: float
    peak_memory_mb: float
    artifact_bytes: int
    host: str


class HealthCheck(_Model):
    """What a device runs on a freshly installed model before it commits to it.

    `sample_input` is a .npy file in the bundle holding one input exactly as the primary
    artifact takes it (shape, dtype, layout); `sample_outputs` a .npz of that artifact's raw
    outputs on it on the build host, as `output_0`, `output_1`, ... The device runs the sample,
    compares with cosine similarity, and times it.
    """

    sample_input: str
    sample_outputs: str
    min_cosine: float = Field(default=0.98, gt=0.0, le=1.0)
    max_latency_ms: float | None = Field(
        default=None, gt=0.0, description="Latency budget of one inference on the device; None: not checked."
    )


class DriftSummary(_Model):
    """Statistics of what a model saw and said: the build-time reference and the fleet's telemetry alike.

    Input statistics are per channel of the preprocessed float input (one channel for non-image
    inputs); counts, not fractions, so summaries from many devices and intervals add up.
    `confidence_hist` has `len(CONFIDENCE_EDGES) - 1` bins over [0, 1]: the top class probability
    of a classifier, the best detection score of a detector.
    """

    samples: int = Field(ge=0)
    input_mean: list[float] = Field(default_factory=list)
    input_std: list[float] = Field(default_factory=list)
    # Counts are checked by pydantic's own validator (ge=0 on each item): with every telemetry message
    # carrying these, a Python loop over them was a tenth of the registry's parsing time.
    confidence_hist: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    class_hist: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shapes(self) -> DriftSummary:
        if len(self.input_mean) != len(self.input_std):
            raise ValueError("input_mean and input_std need one value per channel each")
        if self.confidence_hist and len(self.confidence_hist) != CONFIDENCE_BINS:
            raise ValueError(f"confidence_hist needs {CONFIDENCE_BINS} bins")
        return self


class PruningLineage(_Model):
    """`edgectl optimize` pruned this model's source: how, and what it cost (from the source's sidecar)."""

    method: str
    ratio: float = Field(gt=0.0, lt=1.0)
    round_to: int = Field(ge=1)
    torch_pruning: str = Field(description="The Torch-Pruning version that pruned it.")
    source_sha256: str = Field(description="The unpruned model's sha256.")
    params_before: int = Field(ge=0)
    params_after: int = Field(ge=0)
    macs_before: int = Field(ge=0)
    macs_after: int = Field(ge=0)
    finetune_epochs: int = Field(ge=0)
    finetune_data_sha256: str
    distilled: bool
    metric: str
    metric_before: float
    metric_after: float


class Lineage(_Model):
    """Where a version comes from, for the registry's lineage and the retraining loop."""

    parent_version: int | None = Field(default=None, ge=1)
    training_data: str | None = Field(
        default=None, description="A reference to the training data (URI, hash)."
    )
    data_snapshots: dict[str, str] = Field(default_factory=dict, description="Dataset name -> sha256.")
    trigger: str | None = Field(
        default=None, description="What started the build: manual, drift, schedule, ..."
    )
    pruning: PruningLineage | None = Field(default=None, description="Set when the source was pruned.")


class EngineBuild(_Model):
    """A TensorRT engine that was built and checked: valid only where all three match exactly."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    path: str | None = Field(default=None, description="The engine file in the bundle, if it ships one.")
    builder: Literal["tensorrt", "trtexec", "torch-tensorrt"] = "tensorrt"


class TensorRTPlan(_Model):
    """How a device builds its own TensorRT engine from the bundle's ONNX model (engines do not travel).

    A device builds on first start and caches the engine under the key
    (TensorRT version, GPU name, compute capability, plan hash); see `edgetrt.cache`.
    """

    onnx: str = Field(description="The ONNX artifact to build from (static shapes).")
    precision: Precision
    explicit_quantization: bool = Field(
        description="The ONNX model carries Q/DQ nodes (INT8 by explicit quantization)."
    )
    builder_flags: list[Literal["FP16", "INT8", "GPU_FALLBACK", "STRICT_TYPES"]] = Field(default_factory=list)
    workspace_mb: int = Field(gt=0)
    dla_core: int | None = Field(default=None, ge=0, description="Run on this DLA core; None: the GPU.")
    input_shapes: dict[str, list[int]]
    timing_cache: Literal["per-device", "none"] = "per-device"
    builder_optimization_level: int = Field(default=3, ge=0, le=5)
    opset: int
    tensorrt_versions: str = Field(
        description="TensorRT versions the plan and the ONNX opset suit, e.g. '>=10.3,<11'."
    )
    compute_capability: str | None = Field(default=None, description="The GPU the target profile names.")
    trtexec: str = Field(description="The same build by hand, for people who build engines themselves.")
    engines: list[EngineBuild] = Field(
        default_factory=list, description="Engines built and validated at build time."
    )


class CoreMLFeature(_Model):
    """One input or output of a Core ML model, as its spec declares it (Xcode shows the same)."""

    name: str
    kind: Literal["image", "multiarray", "double", "int64", "string", "dictionary"]
    shape: list[int] = Field(default_factory=list, description="Image: [C, H, W]; -1 marks a flexible axis.")
    dtype: str | None = Field(default=None, description="float32, float16, int32 or double for numbers.")
    color: ColorOrder | None = Field(
        default=None, description="Image inputs: the channel order Core ML feeds."
    )
    optional: bool = False


class CoreMLCheck(_Model):
    name: str
    passed: bool
    detail: str = ""


class CoreMLWeights(_Model):
    """What is compressed in the package. Only weights ever are: activations and compute stay float."""

    mode: Literal["fp32", "fp16", "int8-linear", "palettized"]
    bits: int
    granularity: str | None = Field(default=None, description="int8: per-channel; palettized: per-tensor.")
    compressed_tensors: int = Field(ge=0, description="Weight tensors stored compressed in the package.")
    summary: str


class CoreMLNMS(_Model):
    """The detector pipeline's NonMaximumSuppression stage, as configured in the package."""

    confidence_threshold: float
    iou_threshold: float
    max_detections: int
    per_class: bool
    classes: int = Field(description="Real classes; the labels after them only pad the confidence rows.")
    confidence_columns: int = Field(description="Columns of the confidence output (classes plus padding).")


class CoreMLReport(_Model):
    """iOS bundles: how the Core ML package was made and which of its checks ran on the build host."""

    model_type: Literal["mlprogram", "pipeline"]
    deployment_target: str
    specification_version: int
    compute_precision: Literal["fp16", "fp32"]
    compute_units: str = Field(description="What the app should set in MLModelConfiguration.computeUnits.")
    weights: CoreMLWeights
    inputs: list[CoreMLFeature]
    outputs: list[CoreMLFeature]
    labels: list[str] = Field(default_factory=list, description="Class labels stored in the package.")
    image_scale: float | None = Field(default=None, description="Core ML computes scale * pixel + bias.")
    image_bias: list[float] = Field(default_factory=list)
    std_in_model: list[float] = Field(
        default_factory=list, description="Per-channel std the model divides by (when it is not one scalar)."
    )
    softmax_added: bool = Field(default=False, description="A softmax was appended to a logits classifier.")
    nms: CoreMLNMS | None = None
    structural_checks: list[CoreMLCheck] = Field(default_factory=list)
    numerical_check: str | None = Field(
        default=None, description="What the numerical check was; None: none ran."
    )
    macos_predict: bool = Field(description="Core ML itself predicted on the validation data (macOS only).")
    notes: list[str] = Field(default_factory=list)


class FitItem(_Model):
    """One line of a microcontroller memory budget: what takes the bytes and how the figure was obtained."""

    what: str
    bytes: int = Field(ge=0)
    basis: Literal["measured", "estimated", "board", "policy"] = Field(
        description="measured: on the build host; estimated: see notes; board: the profile's reserve; "
        "policy: a stated margin."
    )


class MemoryBudget(_Model):
    capacity_bytes: int = Field(ge=0, description="What the board has: the profile's flash_kb or sram_kb.")
    items: list[FitItem]
    needed_bytes: int = Field(ge=0, description="The sum of the items.")
    fits: bool


class MemoryFit(_Model):
    """TFLite Micro targets: how the model fits the board's flash and RAM, and the tensor arena to allocate."""

    fits: bool
    flash: MemoryBudget
    ram: MemoryBudget
    arena_bytes: int = Field(
        ge=0, description="The tensor arena to allocate: the measured smallest + margin."
    )
    arena_measured_bytes: int = Field(
        ge=0, description="The smallest arena with which TFLM allocated and ran the model on the build host."
    )
    arena_margin_bytes: int = Field(ge=0)
    arena_margin_rule: str
    arena_recorded_bytes: int = Field(
        ge=0, description="What TFLM's RecordingMicroAllocator reported on the (64-bit) build host."
    )
    ops: dict[str, int] = Field(description="Builtin ops the model uses and how often.")
    peak_layer: str | None = Field(
        default=None, description="The op during which most activations are alive."
    )
    peak_layer_bytes: int = Field(default=0, ge=0)
    notes: list[str] = Field(
        default_factory=list, description="How each estimate was obtained, what is left out."
    )


class Manifest(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1, description="Monotonic per model: a device refuses a lower version.")
    created_at: str
    target: str
    runtime: str
    precision: Precision
    artifacts: list[Artifact]
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    source: SourceInfo
    toolchain: ToolchainInfo
    validation: ValidationReport | None = None
    benchmark: BenchmarkReport | None = None
    health: HealthCheck | None = Field(default=None, description="The device's check before committing.")
    drift_reference: DriftSummary | None = Field(
        default=None, description="Input and output statistics on the validation data at build time."
    )
    lineage: Lineage = Field(default_factory=Lineage)
    tensorrt: TensorRTPlan | None = Field(
        default=None, description="Jetson: the device-side engine build plan."
    )
    coreml: CoreMLReport | None = Field(default=None, description="iOS: the Core ML package and its checks.")
    memory_fit: MemoryFit | None = Field(
        default=None, description="Microcontrollers: flash and RAM against the board, and the tensor arena."
    )
    files: list[FileEntry] = Field(default_factory=list, description="sha256 of every file but the manifest.")
    key_id: str | None = Field(default=None, description="Fingerprint of the public key that signs it.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_name(value):
            raise ValueError("name must be 1-128 of letters, digits, '.', '_' or '-', starting alphanumeric")
        return value

    @model_validator(mode="after")
    def _artifacts_listed(self) -> Manifest:
        if not self.artifacts:
            raise ValueError("a manifest needs at least one artifact")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files lists a path twice")
        if {MANIFEST_NAME, SIGNATURE_NAME} & set(paths):
            raise ValueError("files must not list manifest.json or manifest.sig")
        if self.files:
            listed = set(paths)
            # an artifact is a file, or a folder of files (a Core ML .mlpackage)
            missing = [
                a.path
                for a in self.artifacts
                if a.path not in listed and not any(f.startswith(a.path + "/") for f in listed)
            ]
            if self.health is not None:
                missing += [
                    p for p in (self.health.sample_input, self.health.sample_outputs) if p not in listed
                ]
            if missing:
                raise ValueError(f"artifacts missing from files: {missing}")
        return self


TensorSpec.model_rebuild()
Artifact.model_rebuild()
