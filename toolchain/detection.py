"""Detection post-processing and scoring in plain numpy (no torch), shared by the host and the device agent.

- `decode_ultralytics` turns the raw output of an Ultralytics YOLO detector (v8 / 11 head) into boxes,
  with the same confidence filter, best-class choice and class-aware greedy NMS as Ultralytics'
  `non_max_suppression` (multi_label=False).
- `detection_metrics` scores boxes against ground truth the way Ultralytics' detection validator does
  (`DetectionValidator.match_predictions` + `ap_per_class` / `compute_ap`: 10 IoU thresholds 0.50:0.05:0.95,
  greedy confidence-ordered one-to-one matching, 101-point interpolated AP, precision and recall taken at the
  confidence that maximises the smoothed mean F1), so the numbers read the same as what Ultralytics users see.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0.0, 1.0, 101)  # COCO 101-point recall grid
_CURVE_X = np.linspace(0.0, 1.0, 1000)  # confidence grid for the P/R/F1 curves
_IOU_EPS = 1e-7  # same epsilon as ultralytics.utils.metrics.box_iou
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) centre-x, centre-y, width, height -> x1, y1, x2, y2."""
    boxes = np.asarray(boxes)
    out = np.empty_like(boxes)
    half_w, half_h = boxes[..., 2] / 2, boxes[..., 3] / 2
    out[..., 0] = boxes[..., 0] - half_w
    out[..., 1] = boxes[..., 1] - half_h
    out[..., 2] = boxes[..., 0] + half_w
    out[..., 3] = boxes[..., 1] + half_h
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x1, y1, x2, y2 boxes -> (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + _IOU_EPS)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Indices kept by greedy NMS (highest score first, drop boxes with IoU > threshold), at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_ultralytics(
    output: np.ndarray,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_detections: int = 300,
    *,
    multi_label: bool = False,
    max_candidates: int = 30000,
) -> list[np.ndarray]:
    """Decode the raw output of an Ultralytics YOLO detector (v8 / 11 style, NMS not exported).

    `output` has shape (batch, 4 + num_classes, anchors) (a single (4 + num_classes, anchors) image is
    accepted too): boxes as centre-x, centre-y, width, height in input pixels, then the per-class scores
    (already sigmoid'ed). Each anchor keeps its best class (Ultralytics' default, multi_label=False) when that
    score is above `conf_threshold`; with `multi_label=True` every (anchor, class) pair above the threshold is a
    candidate, as in Ultralytics' validator (which reports slightly higher mAP that way). The
    `max_candidates` best go through class-aware greedy NMS (a box is dropped when its IoU with a better box
    of the same class exceeds `iou_threshold`), and at most `max_detections` survive.

    Returns one float32 array per image of shape (n, 6): x1, y1, x2, y2, score, class, best score first.
    """
    out = np.asarray(output)
    if out.dtype != np.float64:
        out = out.astype(np.float32, copy=False)  # fp16 models: decode in float32 like Ultralytics on CPU
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3 or out.shape[1] < 5:
        raise ValueError(
            f"expected an Ultralytics detector output of shape (batch, 4 + num_classes, anchors), got {out.shape}"
        )
    results: list[np.ndarray] = []
    for image in out:
        cls_scores = image[4:]  # (nc, anchors)
        if multi_label:
            anchors, classes = np.nonzero((cls_scores > conf_threshold).T)  # anchor-major, like torch.where
        else:
            best_class = cls_scores.argmax(axis=0)
            anchors = np.flatnonzero(cls_scores.max(axis=0) > conf_threshold)
            classes = best_class[anchors]
        scores = cls_scores[classes, anchors].astype(np.float64)
        if anchors.size > max_candidates:
            top = np.argsort(-scores, kind="stable")[:max_candidates]
            anchors, classes, scores = anchors[top], classes[top], scores[top]
        if anchors.size == 0:
            results.append(np.zeros((0, 6), dtype=np.float32))
            continue
        boxes = xywh_to_xyxy(image[:4, anchors].T).astype(np.float64)
        # Class-aware NMS in one pass: shift each class into its own region of the plane so that boxes of
        # different classes can never overlap (Ultralytics does the same with a fixed 7680 px offset).
        span = max(float(np.abs(boxes).max()) * 2 + 1, 7680.0)
        keep = _greedy_nms(boxes + (classes * span)[:, None], scores, iou_threshold, max_detections)
        det = np.concatenate(
            [boxes[keep], scores[keep, None], classes[keep, None].astype(np.float64)], axis=1
        )
        results.append(det.astype(np.float32))
    return results


def yolo_labels_to_xyxy(labels: np.ndarray, width: float, height: float) -> np.ndarray:
    """(m, 5) YOLO label rows `class cx cy w h` (normalised) -> new (m, 5) `class x1 y1 x2 y2` in pixels."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
    out = np.empty_like(labels)
    out[:, 0] = labels[:, 0]
    out[:, 1:] = xywh_to_xyxy(labels[:, 1:]) * np.asarray([width, height, width, height], dtype=np.float32)
    return out


def match_predictions(
    pred_classes: np.ndarray,
    true_classes: np.ndarray,
    iou: np.ndarray,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """Which predictions are true positives at each IoU threshold -> bool (n_pred, n_thresholds).

    `iou` is (n_true, n_pred) with the predictions in descending-confidence order. Greedy, as in
    Ultralytics' `DetectionValidator.match_predictions`: each prediction in turn claims the unclaimed
    same-class ground truth it overlaps most, independently per threshold.
    """
    correct = np.zeros((len(pred_classes), len(thresholds)), dtype=bool)
    if len(pred_classes) == 0 or len(true_classes) == 0:
        return correct
    iou = iou * (true_classes[:, None] == pred_classes[None, :])
    matched = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    columns = np.arange(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(axis=0)):
        available = np.where(matched, 0.0, iou[:, j, None])  # (n_true, n_thresholds)
        k = available.argmax(axis=0)
        correct[j] = available[k, columns] >= thresholds
        matched[k, columns] |= correct[j]
    return correct


def _smooth(y: np.ndarray, fraction: float) -> np.ndarray:
    """Box filter of width `fraction` of the length (Ultralytics' `smooth`)."""
    n = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(n // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(padded, np.ones(n) / n, mode="valid")


def _compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP of one precision/recall curve (Ultralytics' `compute_ap`)."""
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(_trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


def _ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class AP (nc, n_thresholds), precision (nc,) and recall (nc,) as Ultralytics' `ap_per_class`.

    Classes are those with at least one ground truth box; precision and recall are read at the confidence
    that maximises the (smoothed) F1 averaged over those classes.
    """
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_true = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve = np.zeros((len(classes), len(_CURVE_X)))
    r_curve = np.zeros((len(classes), len(_CURVE_X)))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum(0)
        fpc = (1 - tp[mine]).cumsum(0)
        recall = tpc / (n_true[ci] + eps)
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-_CURVE_X, -conf[mine], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-_CURVE_X, -conf[mine], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j] = _compute_ap(recall[:, j], precision[:, j])
    if len(classes) == 0:
        return ap, np.zeros(0), np.zeros(0)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = _smooth(f1_curve.mean(0), 0.1).argmax()
    return ap, p_curve[:, best], r_curve[:, best]


def detection_metrics(
    predictions: list[np.ndarray], ground_truths: list[np.ndarray], num_classes: int
) -> dict[str, float]:
    """COCO-style box metrics, computed as Ultralytics' detection validator does.

    `predictions[i]` is (n, 6) x1, y1, x2, y2, score, class (as `decode_ultralytics` returns);
    `ground_truths[i]` is (m, 5) class, x1, y1, x2, y2 in the same pixel space. Returns fractions in [0, 1]:
    "mAP50-95" (mean over IoU 0.50:0.05:0.95), "mAP50", and the mean "precision" / "recall" at the
    confidence maximising F1. Like Ultralytics, the means run over the classes that have ground truth
    (predictions of other classes cost nothing); with no ground truth at all every figure is 0.
    `num_classes` is the size of the label space: ground truth classes outside [0, num_classes) are an error.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truths)} ground truth sets")
    n_t = len(IOU_THRESHOLDS)
    tps, confs, pred_classes, true_classes = [], [], [], []
    for pred, gt in zip(predictions, ground_truths, strict=True):
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 6)
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 5)
        if gt.size and (gt[:, 0].min() < 0 or gt[:, 0].max() >= num_classes):
            raise ValueError(f"ground truth class outside [0, {num_classes}): {np.unique(gt[:, 0])}")
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]
        if len(pred) and len(gt):
            tp = match_predictions(pred[:, 5], gt[:, 0], box_iou(gt[:, 1:], pred[:, :4]))
        else:
            tp = np.zeros((len(pred), n_t), dtype=bool)
        tps.append(tp)
        confs.append(pred[:, 4])
        pred_classes.append(pred[:, 5])
        true_classes.append(gt[:, 0])
    zeros = {"mAP50-95": 0.0, "mAP50": 0.0, "precision": 0.0, "recall": 0.0}
    if not tps:
        return zeros
    target_cls = np.concatenate(true_classes)
    if target_cls.size == 0:
        return zeros
    ap, precision, recall = _ap_per_class(
        np.concatenate(tps).astype(np.float64),
        np.concatenate(confs),
        np.concatenate(pred_classes),
        target_cls,
    )
    return {
        "mAP50-95": float(ap.mean()),
        "mAP50": float(ap[:, 0].mean()),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
    }
