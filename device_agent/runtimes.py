"""Runtimes that run a bundle's model on the device: one table, keyed by the manifest's `runtime` field.

Each entry names the modules it needs (any one of a group will do), the
artifact formats it opens and the extra that installs it; `open_session`
picks the entry, checks its modules before importing anything, picks the
bundle's first artifact of a format it takes, and returns a `Session`.
Registering a runtime twice is an error at import; an unknown runtime or a
missing module is a `RuntimeUnavailable` that says what to install.

Sessions return raw outputs (integer tensors stay integer); the pipeline
dequantizes them with the output spec when it needs floats.

TensorRT engines are built on the device from the bundle's plan (they are
not portable across GPUs or TensorRT versions) by the shared `edgetrt`
package, cached under (TensorRT version, GPU name, compute capability, plan
hash); where TensorRT, cuda-python or edgetrt is missing the entry fails
with an error naming them and the extra that installs them.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from device_agent.errors import RuntimeUnavailable
from edgebundle.manifest import ORT_DTYPES, Artifact, Manifest, TensorSpec
from targets.runtimes import RUNTIMES as RUNTIME_FACTS

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as the runtime sees it; `quantization` is (scale, zero point) of integer tensors."""

    name: str
    shape: tuple[int, ...]  # -1 for a dynamic axis
    dtype: str
    quantization: tuple[float, int] | None = None


class Session(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    details: dict[str, str]  # what the status page shows: runtime, providers, delegate

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class SessionOptions:
    threads: int | None = None
    providers: str | list[str] = "auto"
    cache_dir: Path | None = None  # compiled engines (TensorRT) live here


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    requires: tuple[tuple[str, ...], ...]  # each group is satisfied by any one of its modules
    formats: tuple[str, ...]
    extra: str
    load: Callable[[Path, Artifact, Manifest, SessionOptions], Session]

    def missing(self) -> list[str]:
        """The requirement groups none of whose modules is importable, as 'a or b' strings."""
        return [
            " or ".join(group)
            for group in self.requires
            if not any(importlib.util.find_spec(module) is not None for module in group)
        ]


RUNTIMES: dict[str, RuntimeEntry] = {}


def register(name: str, *, requires: tuple[tuple[str, ...], ...], formats: tuple[str, ...], extra: str):
    def add(load: Callable[[Path, Artifact, Manifest, SessionOptions], Session]):
        if name in RUNTIMES:
            raise ValueError(f"runtime {name!r} is registered twice")
        if name not in RUNTIME_FACTS:  # the bundle's `runtime` field takes only targets/runtimes.py's names
            raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIME_FACTS)}")
        RUNTIMES[name] = RuntimeEntry(name, requires, formats, extra, load)
        return load

    return add


def runtime_entry(name: str) -> RuntimeEntry:
    entry = RUNTIMES.get(name)
    if entry is None:
        raise RuntimeUnavailable(
            f"bundle runtime {name!r} is not one this agent runs ({', '.join(sorted(RUNTIMES))})",
            hint="build the bundle for this device's target",
        )
    return entry


def check_available(name: str) -> None:
    """Raise RuntimeUnavailable unless the runtime is known and its modules are installed (imports nothing)."""
    entry = runtime_entry(name)
    missing = entry.missing()
    if missing:
        raise RuntimeUnavailable(
            f"bundle runtime {name!r} needs {', '.join(missing)}, which this device lacks",
            hint=f"install the agent with the '{entry.extra}' extra (pip install 'edgectl[{entry.extra}]')",
        )


def model_artifact(manifest: Manifest) -> Artifact:
    """The artifact the bundle's runtime opens: the first one (the primary) of a format it takes."""
    entry = runtime_entry(manifest.runtime)
    for artifact in manifest.artifacts:
        if artifact.format in entry.formats:
            return artifact
    raise RuntimeUnavailable(
        f"bundle {manifest.name} v{manifest.version} has no artifact that runtime {manifest.runtime!r} opens "
        f"(formats {', '.join(entry.formats)})",
        hint="rebuild the bundle with edgectl build",
    )


def open_session(bundle_dir: Path, manifest: Manifest, options: SessionOptions) -> Session:
    """A session on the bundle's model; RuntimeUnavailable (never a runtime's own exception) if it cannot load."""
    check_available(manifest.runtime)
    artifact = model_artifact(manifest)
    try:
        return RUNTIMES[manifest.runtime].load(bundle_dir, artifact, manifest, options)
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # each runtime has its own exception types; callers need one
        raise RuntimeUnavailable(
            f"{manifest.runtime} cannot load {artifact.path}: {type(exc).__name__}: {str(exc)[:300]}",
            hint="the bundle may need a newer runtime than this device has",
        ) from exc


# --------------------------------------------------------------------------- ONNX Runtime

# Preferred order when `providers` is auto: the fastest the installed build has.
_ORT_AUTO = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _static(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def ort_providers(wanted: str | list[str], available: list[str], cache_dir: Path | None) -> list:
    """The provider list for a session: `auto` takes the best present; a named one must be present."""
    names = [p for p in _ORT_AUTO if p in available] if wanted == "auto" else list(wanted)
    absent = [p for p in names if p not in available]
    if absent:
        raise RuntimeUnavailable(
            f"ONNX Runtime execution provider(s) {', '.join(absent)} not in this build "
            f"(it has {', '.join(available)})",
            hint="set inference.providers to auto, or install the onnxruntime build that has them",
        )
    providers: list = []
    for name in names:
        if name == "TensorrtExecutionProvider" and cache_dir is not None:
            engines = cache_dir / "ort-tensorrt"
            engines.mkdir(parents=True, exist_ok=True)
            providers.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines)}))
        else:
            providers.append(name)
    return providers


class OnnxRuntimeSession:
    def __init__(self, path: Path, artifact: Artifact, options: SessionOptions) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if options.threads:
            session_options.intra_op_num_threads = options.threads
            session_options.inter_op_num_threads = 1
        providers = ort_providers(options.providers, ort.get_available_providers(), options.cache_dir)
        self._session = ort.InferenceSession(str(path), session_options, providers=providers)

        def info(value, specs: list[TensorSpec]) -> TensorInfo:
            spec = next((s for s in specs if s.name == value.name and s.quantization is not None), None)
            quantization = (spec.quantization.scale, spec.quantization.zero_point) if spec else None
            return TensorInfo(
                value.name, _static(value.shape), ORT_DTYPES.get(value.type, "float32"), quantization
            )

        self.inputs = [info(v, artifact.inputs) for v in self._session.get_inputs()]
        self.outputs = [info(v, artifact.outputs) for v in self._session.get_outputs()]
        self._input_names = [t.name for t in self.inputs]
        self._output_names = [t.name for t in self.outputs]
        self.details = {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": ",".join(self._session.get_providers()),
        }

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # ONNX Runtime sessions are thread-safe: concurrent requests run concurrently.
        return self._session.run(self._output_names, dict(zip(self._input_names, inputs, strict=True)))


@register("onnxruntime", requires=(("onnxruntime",),), formats=("onnx", "ort"), extra="agent")
def _load_onnxruntime(
    bundle_dir: Path, artifact: Artifact, manifest: Manifest, options: SessionOptions
) -> Session:
    return OnnxRuntimeSession(bundle_dir / artifact.path, artifact, options)


# --------------------------------------------------------------------------- LiteRT / TFLite


def litert_interpreter_class():
    """LiteRT's Interpreter from ai-edge-litert, or from the older tflite-runtime package."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter


class LiteRTSession:
    """The LiteRT interpreter (XNNPACK for float models by default). Not thread-safe: runs are serialized."""

    def __init__(self, path: Path, options: SessionOptions) -> None:
        interpreter_class = litert_interpreter_class()
        self._interpreter = interpreter_class(model_path=str(path), num_threads=options.threads)
        self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

        def info(detail: dict) -> TensorInfo:
            import numpy as np

            scale, zero_point = detail["quantization"]
            quantization = (float(scale), int(zero_point)) if scale else None
            shape = tuple(int(d) for d in detail["shape"])
            return TensorInfo(detail["name"], shape, np.dtype(detail["dtype"]).name, quantization)

        input_details = self._interpreter.get_input_details()
        output_details = self._interpreter.get_output_details()
        self.inputs = [info(d) for d in input_details]
        self.outputs = [info(d) for d in output_details]
        self._input_index = [d["index"] for d in input_details]
        self._output_index = [d["index"] for d in output_details]
        module = interpreter_class.__module__.split(".")[0]
        self.details = {"runtime": "tflite", "package": module, "threads": str(options.threads or "default")}

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for index, value in zip(self._input_index, inputs, strict=True):
                self._interpreter.set_tensor(index, value)
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(index) for index in self._output_index]


@register(
    "tflite", requires=(("ai_edge_litert", "tflite_runtime"),), formats=("tflite",), extra="agent-tflite"
)
def _load_tflite(
    bundle_dir: Path, artifact: Artifact, manifest: Manifest, options: SessionOptions
) -> Session:
    return LiteRTSession(bundle_dir / artifact.path, options)


# --------------------------------------------------------------------------- TensorRT


class TensorRTSession:
    """An engine built on this device from the bundle's plan (edgetrt), run with TensorRT and cuda-python."""

    def __init__(self, runner, built_now: bool, key) -> None:
        import numpy as np

        self._runner = runner
        self._lock = threading.Lock()  # one execution context and its buffers
        self.inputs = [TensorInfo(n, tuple(shape), np.dtype(d).name) for n, shape, d in runner.inputs]
        self.outputs = [TensorInfo(n, tuple(shape), np.dtype(d).name) for n, shape, d in runner.outputs]
        self.details = {
            "runtime": "tensorrt",
            "tensorrt": key.tensorrt_version,
            "gpu": key.gpu_name,
            "engine": "built on this device now" if built_now else "from the engine cache",
        }

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            return self._runner.run(*inputs)


@register("tensorrt", requires=(("tensorrt",), ("cuda",), ("edgetrt",)), formats=("onnx",), extra="jetson")
def _load_tensorrt(
    bundle_dir: Path, artifact: Artifact, manifest: Manifest, options: SessionOptions
) -> Session:
    """Build the engine once per (TensorRT version, GPU, compute capability, plan hash), then load it.

    Engines are not portable across GPUs or TensorRT versions, so the bundle carries an ONNX model and
    a build plan; edgetrt keys its cache by exactly what makes an engine valid and refuses a mismatch.
    """
    from edgetrt import EngineCache
    from edgetrt.build import engine_for
    from edgetrt.runner import TensorRTRunner

    plan = manifest.tensorrt
    if plan is None:
        raise RuntimeUnavailable(
            f"bundle {manifest.name} v{manifest.version} has no TensorRT build plan",
            hint="rebuild it with edgectl build for a Jetson target",
        )
    if options.cache_dir is None:
        raise RuntimeUnavailable("TensorRT engines need a cache folder", hint="this is a bug in the agent")
    engine, key, built_now = engine_for(
        bundle_dir / plan.onnx, plan, EngineCache(options.cache_dir / "tensorrt")
    )
    return TensorRTSession(TensorRTRunner(engine), built_now, key)
