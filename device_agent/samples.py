"""Sample upload: the inputs the model was least sure about, sent to the registry where switched on.

No raw input leaves the device unless the registry switched sample upload on for the device's group
(`GET /v1/device/config`, polled with the desired version) and the agent's own config allows it
(`telemetry.sample_upload`, true by default). Then:

- the serving pipeline offers each classification to a `SampleCollector` (one call, only while a
  collector is attached; nothing at all otherwise). An offer at or above the collector's cut-off
  returns at once: the cut-off is `max_confidence` until `per_upload` inputs are kept, then the
  confidence of the surest one kept, so only a less sure input takes the lock and copies its tensor;
- every `upload_interval_s` the kept inputs are posted (`POST /v1/device/samples`, the preprocessed
  float input and the prediction), at most `max_per_day` a UTC day; the registry enforces the same cap
  and answers what is left, which the agent follows. Samples that could not be sent wait in memory
  (bounded) for the next round; none are written to disk.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgewire.device_api import (
    MAX_SAMPLE_INPUT_BYTES,
    MAX_SAMPLE_REQUEST_BYTES,
    MAX_SAMPLES_PER_UPLOAD,
    Sample,
    SampleUpload,
    SampleUploadSettings,
    encode_input,
)
from edgewire.messages import ModelRef

if TYPE_CHECKING:
    import numpy as np

    from device_agent.pipeline import InferenceResult

log = logging.getLogger(__name__)
DAY_S = 86400
PENDING_ROUNDS = 4  # samples that could not be sent are kept for this many uploads' worth at most


@dataclass(frozen=True)
class Kept:
    confidence: float
    class_id: int
    label: str | None
    captured_at: float
    array: np.ndarray  # the preprocessed float input, batch axis first

    def sample(self, layout: str | None) -> Sample:
        return Sample(
            sample_id=uuid.uuid4().hex,
            captured_at=self.captured_at,
            confidence=min(1.0, max(0.0, self.confidence)),
            predicted_class=self.class_id,
            predicted_label=self.label,
            layout=layout if self.array.ndim == 4 else None,
            **encode_input(self.array),
        )


class SampleCollector:
    """The `per_upload` least confident classifications since the last `take`, for one served model."""

    def __init__(
        self,
        settings: SampleUploadSettings,
        model: ModelRef,
        layout: str | None,
        input_quantization: tuple[float, int] | None,
    ) -> None:
        self.settings, self.model, self.layout = settings, model, layout
        self.capacity = settings.per_upload
        self._quantization = input_quantization
        self._heap: list[tuple[float, int, Kept]] = []  # (-confidence, order, kept): the surest on top
        self._order = itertools.count()
        self._lock = threading.Lock()
        self.cutoff = settings.max_confidence  # read without the lock: a stale value only costs a lock

    def offer(self, result: InferenceResult, float_input: np.ndarray | None, model_input: np.ndarray) -> None:
        """Keep this input if the model was less sure of it than of what is kept (never raises)."""
        predictions = result.predictions
        if not predictions or predictions[0].score >= self.cutoff:
            return
        try:
            self._keep(
                predictions[0].score, predictions[0].class_id, predictions[0].label, float_input, model_input
            )
        except Exception:  # sampling must never fail an inference
            log.exception("sample collection failed")

    def _keep(self, confidence: float, class_id: int, label: str | None, float_input, model_input) -> None:  # type: ignore[no-untyped-def]
        import numpy as np

        from device_agent.preprocess import dequantize

        with self._lock:
            if len(self._heap) >= self.capacity and confidence >= -self._heap[0][0]:
                return
            source = float_input if float_input is not None else dequantize(model_input, self._quantization)
            array = np.array(source, dtype=np.float32, copy=True)
            if array.nbytes > MAX_SAMPLE_INPUT_BYTES:
                return
            kept = Kept(float(confidence), int(class_id), label, time.time(), array)
            entry = (-float(confidence), next(self._order), kept)
            if len(self._heap) >= self.capacity:
                heapq.heapreplace(self._heap, entry)
            else:
                heapq.heappush(self._heap, entry)
            if len(self._heap) >= self.capacity:
                self.cutoff = -self._heap[0][0]

    def take(self) -> list[Kept]:
        """What is kept, least confident first; starts over."""
        with self._lock:
            items = sorted((kept for _, _, kept in self._heap), key=lambda k: k.confidence)
            self._heap = []
            self.cutoff = self.settings.max_confidence
        return items


class SampleUploader:
    """Follows the registry's switch, attaches collectors to the served pipeline, and uploads what they keep."""

    def __init__(self, *, fleet: str, device: str, allowed: bool) -> None:
        self.fleet, self.device, self.allowed = fleet, device, allowed
        self.settings = SampleUploadSettings()
        self.collector: SampleCollector | None = None
        self._pending: list[tuple[ModelRef, str | None, Kept]] = []
        self._next_upload = 0.0
        self._day = -1
        self._remaining = 0
        self.uploaded_total = 0

    @property
    def active(self) -> bool:
        return self.allowed and self.settings.enabled

    def configure(self, settings: SampleUploadSettings, pipeline) -> None:  # type: ignore[no-untyped-def]
        """New settings from the registry: attach, replace or detach the pipeline's collector."""
        if settings == self.settings:
            return
        was = self.settings
        self.settings = settings
        if self.active:
            log.info(
                "sample upload on: the %d least confident inputs under %.2f every %g s, at most %d a day",
                settings.per_upload,
                settings.max_confidence,
                settings.upload_interval_s,
                settings.max_per_day,
            )
        elif was.enabled and self.allowed:
            log.info("sample upload off")
        self.attach(pipeline)

    def attach(self, pipeline) -> None:  # type: ignore[no-untyped-def]
        """Give the (new) served pipeline a fresh collector, keeping what the old one collected."""
        self._park()
        self.collector = None
        if pipeline is not None:
            pipeline.sampler = None
        if pipeline is None or not self.active or pipeline.task != "classify":
            if not self.active:
                self._pending.clear()  # switched off: nothing collected leaves the device any more
            return
        quantization = pipeline.session.inputs[0].quantization if pipeline.session.inputs else None
        pre = pipeline.manifest.preprocessing
        layout = pre.layout if pre.input == "image" else None
        self.collector = SampleCollector(self.settings, pipeline.model_ref, layout, quantization)
        pipeline.sampler = self.collector

    def _park(self) -> None:
        if self.collector is not None:
            collector = self.collector
            self._pending += [(collector.model, collector.layout, kept) for kept in collector.take()]
        limit = self.settings.per_upload * PENDING_ROUNDS
        if len(self._pending) > limit:  # keep the least confident
            self._pending = sorted(self._pending, key=lambda p: p[2].confidence)[:limit]

    def due(self, now: float) -> bool:
        return self.active and now >= self._next_upload

    def upload(self, post, now: float | None = None) -> int:  # type: ignore[no-untyped-def]
        """Post what is kept (`post(SampleUpload) -> (status, SampleUploadResult | None)`); samples accepted."""
        now = time.time() if now is None else now
        self._next_upload = now + self.settings.upload_interval_s
        day = math.floor(now / DAY_S)
        if day != self._day:
            self._day, self._remaining = day, self.settings.max_per_day
        self._park()
        # Today's allowance goes to the least confident; what is past it is not kept for tomorrow.
        queue = sorted(self._pending, key=lambda p: p[2].confidence)[: max(0, self._remaining)]
        self._pending = []
        groups: dict[tuple[str, int, str | None], list[Kept]] = {}
        models: dict[tuple[str, int, str | None], ModelRef] = {}
        for model, layout, kept in queue:
            key = (model.name, model.version, layout)
            groups.setdefault(key, []).append(kept)
            models[key] = model
        requests = [
            (models[key], key[2], batch) for key, kept in groups.items() for batch in _chunks(kept, key[2])
        ]
        accepted = 0
        for index, (model, _layout, batch) in enumerate(requests):
            upload = SampleUpload(
                fleet=self.fleet,
                device=self.device,
                model=ModelRef(name=model.name, version=model.version),
                samples=[sample for _, sample in batch],
            )
            status, result = post(upload)
            if result is None and status not in (401, 403, 404, 422):  # unreachable: the rest waits
                self._pending = [(m, lay, kept) for m, lay, items in requests[index:] for kept, _ in items]
                break
            if result is None:  # switched off meanwhile, or refused: these are dropped
                log.info("the registry refused %d samples (%s)", len(batch), status)
                continue
            accepted += result.accepted
            self._remaining = result.remaining_today
            if self._remaining <= 0:
                break
        self.uploaded_total += accepted
        return accepted


def _chunks(kept: list[Kept], layout: str | None) -> list[list[tuple[Kept, Sample]]]:
    """(kept, its Sample) in requests under the contract's count and size limits."""
    out: list[list[tuple[Kept, Sample]]] = [[]]
    size = 0
    for item in kept:
        sample = item.sample(layout)
        weight = len(sample.data) + 512
        if out[-1] and (
            len(out[-1]) >= MAX_SAMPLES_PER_UPLOAD or size + weight > MAX_SAMPLE_REQUEST_BYTES // 2
        ):
            out.append([])
            size = 0
        out[-1].append((item, sample))
        size += weight
    return [chunk for chunk in out if chunk]
