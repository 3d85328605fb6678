"""Build an engine from an ONNX model and a plan: with TensorRT's Python API, or with trtexec.

`engine_for` is what the device agent and the toolchain call: the cached
engine for this device and plan, built once if missing. The Python API is
used where `tensorrt` imports; where only the trtexec binary exists (JetPack 4
ships Python bindings for Python 3.6 only), the plan's own trtexec line runs.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgebundle.manifest import TensorRTPlan
from edgetrt.cache import EngineCache, EngineKey, engine_key
from edgetrt.device import DeviceInfo, TensorRTUnavailable, device_info
from edgetrt.plan import trtexec_command, version_in_range

TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec")


class EngineBuildError(RuntimeError):
    """TensorRT refused the model or the plan; the message carries the parser's or builder's words."""


def build_engine(
    onnx: bytes, plan: TensorRTPlan, timing_cache: bytes | None = None
) -> tuple[bytes, bytes | None]:
    """(serialized engine, updated timing cache) built with TensorRT's Python API."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused the model: {errors[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb * 2**20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = plan.builder_optimization_level
    cache = None
    if plan.timing_cache == "per-device":
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine (see the TensorRT log above)")
    return bytes(serialized), (bytes(cache.serialize()) if cache is not None else None)


def build_with_trtexec(onnx_path: Path, plan: TensorRTPlan, info: DeviceInfo, timing: Path | None) -> bytes:
    binary = next((found for c in TRTEXEC_CANDIDATES if (found := shutil.which(c))), None)
    if binary is None:
        raise TensorRTUnavailable("neither TensorRT's Python bindings nor trtexec are installed here")
    with tempfile.TemporaryDirectory(prefix="edgetrt-") as tmp:
        engine = Path(tmp) / "model.engine"
        line = trtexec_command(
            plan.model_copy(update={"onnx": str(onnx_path)}), info.tensorrt_version, engine=str(engine)
        )
        args = line.split()
        args[0] = binary
        if timing is not None:
            args = [
                a if not a.startswith("--timingCacheFile=") else f"--timingCacheFile={timing}" for a in args
            ]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not engine.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise EngineBuildError(f"trtexec failed: {' | '.join(tail)[:500]}")
        return engine.read_bytes()


def engine_for(
    onnx_path: Path, plan: TensorRTPlan, cache: EngineCache, info: DeviceInfo | None = None
) -> tuple[bytes, EngineKey, bool]:
    """(engine, its key, whether it was built now) for this device: from the cache, or built and cached.

    Refuses a TensorRT outside the plan's version range before building anything.
    """
    info = info or device_info()
    if not version_in_range(info.tensorrt_version, plan.tensorrt_versions):
        raise EngineBuildError(
            f"TensorRT {info.tensorrt_version} is outside this bundle's range {plan.tensorrt_versions}; "
            "rebuild the bundle for this JetPack"
        )
    onnx = onnx_path.read_bytes()
    key = engine_key(
        info.tensorrt_version, info.gpu_name, info.compute_capability, plan, hashlib.sha256(onnx).hexdigest()
    )
    cached = cache.load(key)
    if cached is not None:
        return cached, key, False
    timing_path = cache.timing_cache_path(key)
    timing = timing_path.read_bytes() if timing_path.is_file() else None
    try:
        import tensorrt  # noqa: F401

        engine, timing = build_engine(onnx, plan, timing)
        builder = "tensorrt"
    except ImportError:
        cache.root.mkdir(parents=True, exist_ok=True)
        engine = build_with_trtexec(
            onnx_path, plan, info, timing_path if plan.timing_cache == "per-device" else None
        )
        timing, builder = None, "trtexec"
    cache.store(key, engine, builder=builder, timing_cache=timing)
    return engine, key, True
