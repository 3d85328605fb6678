"""Drift summaries, computed the same way at build time (the reference) and on devices (telemetry).

One definition on both sides, or the comparison means nothing:
- input statistics per channel of the preprocessed float input: the channel
  axis of an image in its layout (NCHW: 1, NHWC: 3), one channel for any other input;
- confidence: a classifier's top class probability (softmax of its output
  unless the output already is a distribution); a detector's best class score
  over all anchors (Ultralytics layout: batch, 4 + classes, anchors);
- class: the class of that top prediction.

numpy is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgebundle.manifest import CONFIDENCE_BINS, DriftSummary

if TYPE_CHECKING:
    import numpy as np

PSI_EPSILON = 1e-4


def channel_axis(ndim: int, layout: str | None) -> int | None:
    """The channel axis of a batch of `ndim` dims in `layout`; None: one channel over everything."""
    if ndim == 4 and layout == "NCHW":
        return 1
    if ndim == 4 and layout == "NHWC":
        return 3
    return None


def top_predictions(outputs: list[np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(confidence in [0, 1], class index) per sample of a batch; None for tasks without classes."""
    import numpy as np

    if not outputs:
        return None
    out = np.asarray(outputs[0], dtype=np.float64)
    if task == "classify" and out.ndim == 2 and out.shape[1] > 1:
        is_distribution = (
            out.min() >= 0.0 and out.max() <= 1.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)
        )
        if not is_distribution:
            shifted = np.exp(out - out.max(axis=1, keepdims=True))
            out = shifted / shifted.sum(axis=1, keepdims=True)
        return out.max(axis=1), out.argmax(axis=1)
    if task == "detect" and out.ndim == 3 and out.shape[1] > 4:
        scores = out[:, 4:, :]  # (batch, classes, anchors)
        flat = scores.reshape(scores.shape[0], -1)
        best = flat.argmax(axis=1)
        return np.clip(flat.max(axis=1), 0.0, 1.0), best // scores.shape[2]
    return None


class DriftAccumulator:
    """Adds batches up into one DriftSummary; cheap enough to run on every inference."""

    def __init__(self, task: str, num_classes: int = 0, layout: str | None = None) -> None:
        self.task = task
        self.num_classes = num_classes
        self.layout = layout
        self.reset()

    def reset(self) -> None:
        self.samples = 0
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self._elements = 0  # values per channel added so far
        self._confidence = [0] * CONFIDENCE_BINS
        self._classes = [0] * self.num_classes

    def add(self, batch: np.ndarray, outputs: list[np.ndarray]) -> None:
        import numpy as np

        x = np.asarray(batch, dtype=np.float64)
        axis = channel_axis(x.ndim, self.layout)
        values = x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        if self._sum is None or len(self._sum) != len(values):
            self._sum = np.zeros(len(values))
            self._sumsq = np.zeros(len(values))
            self._elements = 0
        self._sum += values.sum(axis=1)
        self._sumsq += np.square(values).sum(axis=1)
        self._elements += values.shape[1]
        self.samples += x.shape[0] if x.ndim else 1
        predictions = top_predictions(outputs, self.task)
        if predictions is not None:
            confidence, classes = predictions
            bins = np.minimum((confidence * CONFIDENCE_BINS).astype(int), CONFIDENCE_BINS - 1)
            for b in bins:
                self._confidence[int(b)] += 1
            for c in classes:
                c = int(c)
                if c >= len(self._classes):
                    self._classes += [0] * (c + 1 - len(self._classes))
                self._classes[c] += 1

    def summary(self) -> DriftSummary:
        import numpy as np

        if self._sum is None or self._elements == 0:
            mean: list[float] = []
            std: list[float] = []
        else:
            m = self._sum / self._elements
            var = np.maximum(self._sumsq / self._elements - m * m, 0.0)
            mean, std = [float(v) for v in m], [float(v) for v in np.sqrt(var)]
        has_classes = self.task in ("classify", "detect") and sum(self._confidence) > 0
        return DriftSummary(
            samples=self.samples,
            input_mean=mean,
            input_std=std,
            confidence_hist=list(self._confidence) if has_classes else [],
            class_hist=list(self._classes) if has_classes else [],
        )


def summarize(
    inputs: np.ndarray, outputs: list[np.ndarray], task: str, layout: str | None, num_classes: int = 0
) -> DriftSummary:
    """The summary of a whole dataset at once (the build's reference): `inputs` batched, outputs per output."""
    accumulator = DriftAccumulator(task, num_classes, layout)
    accumulator.add(inputs, outputs)
    return accumulator.summary()


def merge(summaries: list[DriftSummary]) -> DriftSummary:
    """Pool summaries (devices, intervals): sample-weighted means and variances, histograms added."""
    used = [s for s in summaries if s.samples > 0]
    if not used:
        return DriftSummary(samples=0)
    total = sum(s.samples for s in used)
    channels = {len(s.input_mean) for s in used}
    mean: list[float] = []
    std: list[float] = []
    if len(channels) == 1 and channels != {0}:
        (n,) = channels
        for c in range(n):
            m = sum(s.samples * s.input_mean[c] for s in used) / total
            second = sum(s.samples * (s.input_std[c] ** 2 + s.input_mean[c] ** 2) for s in used) / total
            mean.append(m)
            std.append(math.sqrt(max(second - m * m, 0.0)))

    def add(lists: list[list[int]]) -> list[int]:
        width = max((len(x) for x in lists), default=0)
        return [sum(x[i] for x in lists if i < len(x)) for i in range(width)]

    return DriftSummary(
        samples=total,
        input_mean=mean,
        input_std=std,
        confidence_hist=add([s.confidence_hist for s in used]),
        class_hist=add([s.class_hist for s in used]),
    )


def psi(reference: list[int] | list[float], current: list[int] | list[float]) -> float:
    """Population stability index of two histograms over the same bins (0: same; > 0.25: a big shift)."""
    width = max(len(reference), len(current))
    if width == 0:
        return 0.0
    ref = [float(reference[i]) if i < len(reference) else 0.0 for i in range(width)]
    cur = [float(current[i]) if i < len(current) else 0.0 for i in range(width)]
    ref_total, cur_total = sum(ref), sum(cur)
    if ref_total <= 0 or cur_total <= 0:
        return 0.0
    value = 0.0
    for r, c in zip(ref, cur, strict=True):
        p = max(r / ref_total, PSI_EPSILON)
        q = max(c / cur_total, PSI_EPSILON)
        value += (q - p) * math.log(q / p)
    return value


def mean_shift_z(reference: DriftSummary, current: DriftSummary) -> float:
    """The largest per-channel two-sample z statistic of the input means (Welch's, on per-sample stds).

    The per-channel std of a summary spreads over every pixel, so this is a conservative scale for the
    mean of per-sample means; it is a drift score, not a p-value to publish.
    """
    if not reference.input_mean or len(reference.input_mean) != len(current.input_mean):
        return 0.0
    if reference.samples == 0 or current.samples == 0:
        return 0.0
    worst = 0.0
    for m1, s1, m2, s2 in zip(
        reference.input_mean, reference.input_std, current.input_mean, current.input_std, strict=True
    ):
        se = math.sqrt(s1 * s1 / reference.samples + s2 * s2 / current.samples)
        if se > 0:
            worst = max(worst, abs(m2 - m1) / se)
    return worst
