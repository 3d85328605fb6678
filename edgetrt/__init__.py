"""TensorRT engines from a bundle's build plan: shared by the toolchain (host) and the device agent.

Engines are not portable across GPUs or TensorRT versions, so bundles carry an
ONNX model and a plan (`edgebundle.manifest.TensorRTPlan`) and each device
builds its own engine, once, cached under a key of exactly what makes an
engine valid: TensorRT version, GPU name, compute capability and the plan's
hash. An engine is loaded only where its recorded key matches.

Importing this package imports neither TensorRT nor CUDA nor numpy (the agent
starts fast on devices without them); `build`, `runner` and `device` import
them inside the functions that need them.
"""

from edgetrt.cache import EngineCache, EngineKey, EngineMismatch, engine_key, plan_hash
from edgetrt.device import DeviceInfo, TensorRTUnavailable, device_info, tensorrt_available
from edgetrt.plan import make_plan, trtexec_command

__all__ = [
    "DeviceInfo",
    "EngineCache",
    "EngineKey",
    "EngineMismatch",
    "TensorRTUnavailable",
    "device_info",
    "engine_key",
    "make_plan",
    "plan_hash",
    "tensorrt_available",
    "trtexec_command",
]
