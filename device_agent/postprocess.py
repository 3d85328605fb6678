"""Turn raw model outputs into what a caller wants: labels and scores, or boxes after NMS.

Detectors follow the manifest's `NMSParams`, Ultralytics layout: one output
of shape (batch, 4 + classes, anchors), boxes as centre x, centre y, width,
height in model-input pixels, then per-class scores. Each anchor keeps its
best class when that score is above the threshold, the best candidates go
through class-aware greedy NMS (a box is dropped when its IoU with a kept box
of the same class is above the threshold), and boxes are moved back to the
original image through the `Placement` of the preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from device_agent.preprocess import Placement
    from edgebundle.manifest import NMSParams

MAX_NMS_CANDIDATES = 30_000  # as Ultralytics: beyond this many boxes NMS costs more than it is worth


@dataclass(slots=True)
class Prediction:
    class_id: int
    label: str | None
    score: float


@dataclass(slots=True)
class Detection:
    class_id: int
    label: str | None
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2


def _label(labels: list[str], class_id: int) -> str | None:
    return labels[class_id] if 0 <= class_id < len(labels) else None


def is_distribution(row: np.ndarray) -> bool:
    """Scores that already are probabilities (a softmax in the model): in [0, 1] and summing to 1."""
    return bool(row.min() >= 0.0 and row.max() <= 1.0 and abs(float(row.sum()) - 1.0) <= 1e-3)


def classify(
    output: np.ndarray, labels: list[str], top_k: int, *, logits: bool | None = None
) -> list[Prediction]:
    """The top-k classes of the first sample of a (batch, classes) output, with their probabilities.

    `logits`: whether the scores need a softmax; None decides from these scores (a pipeline decides once
    per model). Kept to a few numpy calls: they run right after the runtime, on cold caches.
    """
    import numpy as np

    row = output.reshape(output.shape[0], -1)[0]
    k = max(1, min(top_k, row.size))
    if k == 1:  # the default: the fewest numpy calls (each one right after the runtime runs on cold caches)
        index = int(row.argmax())
        top = row[index]
        wants_softmax = logits if logits is not None else not is_distribution(row)
        score = 1.0 / float(np.exp(row - top).sum()) if wants_softmax else float(top)
        return [Prediction(index, _label(labels, index), score)]
    else:
        best = np.argpartition(row, row.size - k)[row.size - k :] if k < row.size else np.arange(row.size)
        best = best[np.argsort(-row[best], kind="stable")]
    scores = row[best]
    if logits if logits is not None else not is_distribution(row):
        # softmax, for the k winners only: exp(x - max) / sum(exp(row - max)); scores[0] is the max
        scores = np.exp(scores - scores[0]) / np.exp(row - scores[0]).sum()
    return [Prediction(int(i), _label(labels, int(i)), float(p)) for i, p in zip(best, scores, strict=True)]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS over (n, 4) x1, y1, x2, y2 boxes: indices kept, best score first, at most `limit`."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order].astype(np.float64, copy=False)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    alive = np.ones(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == limit:
            break
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        overlap_w = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        overlap_h = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None)
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        alive[rest[iou > iou_threshold]] = False
    return order[np.asarray(kept, dtype=np.int64)]


def best_anchor(output: np.ndarray) -> np.ndarray:
    """The (batch, 4 + classes, 1) column of a detector output with the single best class score.

    Enough for the drift statistics (top confidence and its class) at a fraction of the cost.
    """
    import numpy as np

    batch, _, anchors = output.shape
    best = output[:, 4:, :].reshape(batch, -1).argmax(axis=1) % anchors
    return output[np.arange(batch), :, best][:, :, None]


def scale_boxes(output: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (batch, 4 + classes, anchors) output with normalized box rows, in input pixels (a copy)."""
    import numpy as np

    out = np.array(output, dtype=np.float32)
    if out.ndim == 3 and out.shape[1] > 4:
        out[:, [0, 2]] *= width
        out[:, [1, 3]] *= height
    return out


def detect(
    output: np.ndarray, params: NMSParams, labels: list[str], placement: Placement | None
) -> list[Detection]:
    """Boxes of the first sample of an Ultralytics-style output, in original image pixels when placed."""
    import numpy as np

    out = np.asarray(output)
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3 or out.shape[1] < 5:
        raise ValueError(f"a detector output must be (batch, 4 + classes, anchors), got {list(out.shape)}")
    image = out[0].astype(np.float32, copy=False)
    class_scores = image[4:]
    classes = class_scores.argmax(axis=0)
    confidence = class_scores[classes, np.arange(class_scores.shape[1])]
    candidates = np.flatnonzero(confidence > params.conf_threshold)
    if candidates.size > MAX_NMS_CANDIDATES:
        candidates = candidates[np.argsort(-confidence[candidates], kind="stable")[:MAX_NMS_CANDIDATES]]
    if candidates.size == 0:
        return []
    cx, cy, w, h = (image[row, candidates].astype(np.float64) for row in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores = confidence[candidates].astype(np.float64)
    found = classes[candidates]
    # Class-aware in one pass: each class moves to its own far-away region, so classes never overlap.
    offset = (found * (float(np.abs(boxes).max()) * 2 + 1))[:, None]
    keep = nms(boxes + offset, scores, params.iou_threshold, params.max_detections)
    boxes = boxes[keep]
    if placement is not None:
        boxes[:, [0, 2]] = np.clip(
            (boxes[:, [0, 2]] - placement.pad_x) / placement.ratio_x, 0, placement.width
        )
        boxes[:, [1, 3]] = np.clip(
            (boxes[:, [1, 3]] - placement.pad_y) / placement.ratio_y, 0, placement.height
        )
    return [
        Detection(int(c), _label(labels, int(c)), float(s), tuple(float(v) for v in b))
        for c, s, b in zip(found[keep], scores[keep], boxes, strict=True)
    ]
