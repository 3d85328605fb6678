"""The build plan: what a device needs to build its engine, as data, and the same as a trtexec line.

The plan comes from the target profile (workspace, DLA use, TensorRT version,
compute capability) and the build (precision, explicit quantization, input
shapes, opset). Nothing here needs TensorRT.
"""

from __future__ import annotations

import shlex
from typing import Any

from edgebundle.manifest import Precision, TensorRTPlan

DEFAULT_WORKSPACE_MB = 1024


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor, *_ = [*(int(p) for p in version.split(".")[:2] if p.isdigit()), 0, 0]
    return major, minor


def version_range(profile_version: str | None) -> str:
    """Versions a plan suits: from the profile's TensorRT release up to the next major (plans and
    parser behaviour change across majors, so a new major means rebuilding the bundle)."""
    if not profile_version:
        return ">=8.0"
    major, minor = _version_tuple(profile_version)
    return f">={major}.{minor},<{major + 1}"


def version_in_range(version: str, spec: str) -> bool:
    """Whether TensorRT `version` (e.g. '10.3.0.30') satisfies a range like '>=10.3,<11'."""
    have = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    for clause in spec.split(","):
        clause = clause.strip()
        for op in (">=", "<=", "==", ">", "<"):
            if clause.startswith(op):
                bound = tuple(int(p) for p in clause[len(op) :].split(".") if p.isdigit())
                width = len(bound)
                left = have[:width] + (0,) * max(0, width - len(have))
                ok = {
                    ">=": left >= bound,
                    "<=": left <= bound,
                    "==": left == bound,
                    ">": left > bound,
                    "<": left < bound,
                }[op]
                if not ok:
                    return False
                break
    return True


def make_plan(
    *,
    onnx: str,
    precision: Precision,
    explicit_quantization: bool,
    input_shapes: dict[str, list[int]],
    opset: int,
    options: dict[str, Any],
    tensorrt_version: str | None,
    compute_capability: str | None,
) -> TensorRTPlan:
    """A plan for one bundle. `options` are the target profile's (workspace_mb, use_dla, dla_core, allow_gpu_fallback)."""
    flags: list[str] = []
    if precision in ("fp16", "int8"):
        flags.append("FP16")  # INT8 engines run their float layers in FP16 where that is faster
    if precision == "int8":
        flags.append("INT8")
    dla_core = int(options.get("dla_core", 0)) if options.get("use_dla") else None
    if dla_core is not None and options.get("allow_gpu_fallback", True):
        flags.append("GPU_FALLBACK")  # layers the DLA cannot run go to the GPU instead of failing
    plan = TensorRTPlan(
        onnx=onnx,
        precision=precision,
        explicit_quantization=explicit_quantization,
        builder_flags=flags,
        workspace_mb=int(options.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
        dla_core=dla_core,
        input_shapes={k: list(v) for k, v in input_shapes.items()},
        opset=opset,
        tensorrt_versions=version_range(tensorrt_version),
        compute_capability=compute_capability,
        trtexec="",
    )
    return plan.model_copy(update={"trtexec": trtexec_command(plan, tensorrt_version)})


def trtexec_command(
    plan: TensorRTPlan, tensorrt_version: str | None = None, engine: str = "model.engine"
) -> str:
    """The trtexec line that builds the same engine by hand (flags as of the profile's TensorRT)."""
    major, minor = _version_tuple(tensorrt_version or "10.0")
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={engine}"]
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    if "INT8" in plan.builder_flags:
        args.append("--int8")
    # --memPoolSize arrived in TensorRT 8.4 and replaced --workspace (removed in 10)
    if (major, minor) >= (8, 4):
        args.append(f"--memPoolSize=workspace:{plan.workspace_mb}M")
    else:
        args.append(f"--workspace={plan.workspace_mb}")
    if plan.dla_core is not None:
        args.append(f"--useDLACore={plan.dla_core}")
    if "GPU_FALLBACK" in plan.builder_flags:
        args.append("--allowGPUFallback")
    if (major, minor) >= (8, 6):
        args.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    if plan.timing_cache == "per-device":
        args.append("--timingCacheFile=timing.cache")
    dynamic = {k: v for k, v in plan.input_shapes.items() if any(d < 0 for d in v)}
    if dynamic:  # static models need no shapes; the plan's shapes are the build's
        args.append("--shapes=" + ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in dynamic.items()))
    return shlex.join(args)
