"""One loaded model: runtime session + the manifest's pre- and postprocessing + counters and drift statistics.

The HTTP handler, the input loop and the benchmark all call `infer_image` or
`infer_tensors` here, so what is measured is what serves.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.errors import InferenceInputError
from device_agent.metrics import InferenceMetrics
from device_agent.postprocess import (
    Detection,
    Prediction,
    best_anchor,
    classify,
    detect,
    is_distribution,
    scale_boxes,
)
from device_agent.preprocess import (
    ImagePreprocessor,
    Placement,
    conform,
    dequantize,
    drift_view,
    load_tensors,
)
from device_agent.runtimes import Session, SessionOptions, model_artifact, open_session
from edgebundle.manifest import Manifest, NMSParams
from edgewire import DriftSummary, ModelRef

if TYPE_CHECKING:
    import numpy as np

    from device_agent.samples import SampleCollector


# The best class by default; more on request (`?top_k=5`): each costs a little after every inference.
DEFAULT_TOP_K = 1


class InferenceFailed(RuntimeError):
    """The runtime or the postprocessing failed on a valid input (counted as an inference error)."""


@dataclass
class InferenceResult:
    model: ModelRef
    task: str
    latency_ms: float
    predictions: list[Prediction] | None = None
    detections: list[Detection] | None = None
    outputs: list[np.ndarray] = field(default_factory=list)

    def to_json(self, *, include_outputs: bool) -> dict:
        body: dict = {
            "model": self.model.model_dump(),
            "task": self.task,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.predictions is not None:
            body["predictions"] = [asdict(p) for p in self.predictions]
        if self.detections is not None:
            body["detections"] = [{**asdict(d), "box": list(d.box)} for d in self.detections]
        if include_outputs or (self.predictions is None and self.detections is None):
            body["outputs"] = [
                {"shape": list(o.shape), "dtype": o.dtype.name, "data": o.reshape(-1).tolist()}
                for o in self.outputs
            ]
        return body


class Pipeline:
    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        slot: str | None,
        options: SessionOptions,
        metrics: InferenceMetrics,
        *,
        drift: bool = True,
        drift_per_s: float | None = None,
    ) -> None:
        """`drift_per_s`: at most this many inferences per second go into the drift statistics (None: all)."""
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.slot = slot
        self.metrics = metrics
        self.artifact = model_artifact(manifest)
        self.session: Session = open_session(bundle_dir, manifest, options)
        self.task = manifest.postprocessing.task
        self.labels = manifest.postprocessing.labels
        self.nms = manifest.postprocessing.nms or NMSParams()
        pre = manifest.preprocessing
        self.image_problem: str | None = None
        self._image: ImagePreprocessor | None = None
        if pre.input != "image":
            self.image_problem = "this model takes tensors, not images (preprocessing.input is 'tensor')"
        elif len(self.session.inputs) != 1:
            self.image_problem = f"this model takes {len(self.session.inputs)} inputs, not one image"
        else:
            try:
                self._image = ImagePreprocessor(pre, self.session.inputs[0])
            except InferenceInputError as exc:
                self.image_problem = exc.message
        self._drift_layout = pre.layout if pre.input == "image" else None
        self._drift_lock = threading.Lock()
        self._drift_every = 1.0 / drift_per_s if drift_per_s else 0.0
        self._drift_next = 0.0
        self._drift = None
        if drift:
            from edgewire.drift import DriftAccumulator

            self._drift = DriftAccumulator(self.task, len(self.labels), self._drift_layout)
        self._quantized_outputs = any(info.quantization is not None for info in self.session.outputs)
        self._box_size = None  # (width, height): box rows come normalized to 0..1 (TFLite detectors)
        if self.task == "detect" and self.artifact.boxes == "normalized" and self.artifact.inputs:
            spec = self.artifact.inputs[0]
            hw = spec.shape[1:3] if spec.layout == "NHWC" else spec.shape[2:4]
            if len(hw) == 2 and min(hw) > 0:
                self._box_size = (hw[1], hw[0])
        self._logits: bool | None = None
        self.sampler: SampleCollector | None = None  # device_agent.samples; None: no sample upload
        self.model_ref = ModelRef(
            name=manifest.name, version=manifest.version, slot=slot, target=manifest.target
        )

    # ------------------------------------------------------------------ inference

    def infer_image(self, data, *, top_k: int = DEFAULT_TOP_K) -> InferenceResult:
        """`data`: encoded image bytes (JPEG, PNG, ...) or a decoded PIL image."""
        if self._image is None:
            raise InferenceInputError(
                self.image_problem or "no image input", hint="send a raw tensor (.npy) instead"
            )
        model_input, float_input, placement = self._image(data)
        return self._run([model_input], float_input, placement, top_k)

    def infer_tensors(self, data: bytes | list[np.ndarray], *, top_k: int = DEFAULT_TOP_K) -> InferenceResult:
        """Raw tensors: .npy / .npz bytes, or arrays already in the inputs' shapes and dtypes."""
        specs = self.session.inputs
        if isinstance(data, bytes):
            inputs = load_tensors(data, specs)
        else:
            if len(data) != len(specs):
                raise InferenceInputError(f"the model takes {len(specs)} input(s), got {len(data)}")
            inputs = [conform(array, info) for array, info in zip(data, specs, strict=True)]
        return self._run(inputs, None, None, top_k)

    def _run(
        self,
        inputs: list[np.ndarray],
        float_input: np.ndarray | None,
        placement: Placement | None,
        top_k: int,
    ) -> InferenceResult:
        """`float_input`: the preprocessed float input for the drift statistics (None: the first input's)."""
        start = time.perf_counter()
        try:
            raw = self.session.run(inputs)
        except Exception as exc:
            self.metrics.error()
            raise InferenceFailed(f"the runtime failed: {str(exc)[:300]}") from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        self.metrics.record(latency_ms)
        try:
            outputs = raw
            if self._quantized_outputs:
                outputs = [
                    dequantize(value, info.quantization)
                    for value, info in zip(raw, self.session.outputs, strict=True)
                ]
            if self._box_size is not None:
                outputs = [scale_boxes(outputs[0], *self._box_size), *outputs[1:]]
            result = InferenceResult(self.model_ref, self.task, latency_ms, outputs=outputs)
            if self.task == "classify":
                if self._logits is None:  # a model answers logits or probabilities, always the same
                    self._logits = not is_distribution(outputs[0].reshape(outputs[0].shape[0], -1)[0])
                result.predictions = classify(outputs[0], self.labels, top_k, logits=self._logits)
            elif self.task == "detect":
                result.detections = detect(outputs[0], self.nms, self.labels, placement)
            if self._drift is not None and start >= self._drift_next:
                # A statistic, not a log: a bounded number of samples per second keeps its cost flat at
                # any throughput; the summary's `samples` says how many it covers.
                self._drift_next = start + self._drift_every
                summary_outputs = [best_anchor(outputs[0])] if self.task == "detect" else outputs[:1]
                if float_input is None:
                    float_input = dequantize(inputs[0], self.session.inputs[0].quantization)
                with self._drift_lock:
                    self._drift.add(drift_view(float_input, self._drift_layout), summary_outputs)
        except Exception as exc:
            self.metrics.error()
            raise InferenceFailed(f"postprocessing failed: {str(exc)[:300]}") from exc
        if self.sampler is not None:
            self.sampler.offer(result, float_input, inputs[0])
        return result

    def take_drift(self) -> DriftSummary | None:
        """The drift summary since the last call (None when drift is off or nothing ran); starts over."""
        if self._drift is None:
            return None
        with self._drift_lock:
            if self._drift.samples == 0:
                return None
            summary = self._drift.summary()
            self._drift.reset()
        return summary
