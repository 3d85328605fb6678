"""What this machine offers for TensorRT: the library's version, the GPU's name and compute capability."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here; the message names which."""


@dataclass(frozen=True)
class DeviceInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _cuda_runtime():
    """cuda-python's runtime module under its new name (12.6+) or its old one."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        from cuda import cudart  # type: ignore[import-not-found,no-redef]
    return cudart


def _gpu_from_cuda() -> tuple[str, str] | None:
    try:
        cudart = _cuda_runtime()
    except ImportError:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\0 "), f"{props.major}.{props.minor}"


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    proc = subprocess.run(
        [binary, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    name, capability = (part.strip() for part in proc.stdout.strip().splitlines()[0].split(",", 1))
    return name, capability


def gpu() -> tuple[str, str] | None:
    """(name, compute capability) of GPU 0, from cuda-python or nvidia-smi; None without a GPU."""
    return _gpu_from_cuda() or _gpu_from_nvidia_smi()


def device_info() -> DeviceInfo:
    """TensorRT's version and GPU 0's identity; TensorRTUnavailable naming what is missing."""
    if not tensorrt_available():
        raise TensorRTUnavailable("TensorRT's Python bindings (tensorrt) are not installed here")
    found = gpu()
    if found is None:
        raise TensorRTUnavailable("no CUDA GPU found (neither cuda-python nor nvidia-smi reports one)")
    import tensorrt as trt

    return DeviceInfo(tensorrt_version=trt.__version__, gpu_name=found[0], compute_capability=found[1])
