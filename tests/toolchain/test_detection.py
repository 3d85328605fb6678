"""toolchain.detection: decoding Ultralytics detector outputs and scoring them like Ultralytics does."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.detection import (
    box_iou,
    decode_ultralytics,
    detection_metrics,
    match_predictions,
    yolo_labels_to_xyxy,
)


def _raw_output(anchors: list[tuple[float, float, float, float, list[float]]], nc: int) -> np.ndarray:
    """(1, 4 + nc, n) from rows of (cx, cy, w, h, class scores)."""
    out = np.zeros((1, 4 + nc, len(anchors)), dtype=np.float32)
    for i, (cx, cy, w, h, scores) in enumerate(anchors):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4:, i] = scores
    return out


# ---------------------------------------------------------------- decode_ultralytics


def test_decode_overlapping_same_class_keeps_best():
    out = _raw_output([(50, 50, 20, 20, [0.9, 0.1]), (51, 50, 20, 20, [0.8, 0.05])], nc=2)
    (det,) = decode_ultralytics(out)
    assert det.shape == (1, 6)
    np.testing.assert_allclose(det[0], [40, 40, 60, 60, 0.9, 0], atol=1e-5)


def test_decode_overlapping_different_classes_keeps_both():
    out = _raw_output([(50, 50, 20, 20, [0.9, 0.1]), (51, 50, 20, 20, [0.1, 0.8])], nc=2)
    (det,) = decode_ultralytics(out)
    assert det.shape == (2, 6)
    np.testing.assert_allclose(det[:, 4], [0.9, 0.8], atol=1e-6)  # best score first
    np.testing.assert_array_equal(det[:, 5], [0, 1])


def test_decode_iou_threshold_is_respected():
    # IoU of two 20x20 boxes shifted by 10 px: 200 / 600 = 1/3
    out = _raw_output([(50, 50, 20, 20, [0.9]), (60, 50, 20, 20, [0.8])], nc=1)
    assert len(decode_ultralytics(out, iou_threshold=0.5)[0]) == 2
    assert len(decode_ultralytics(out, iou_threshold=0.3)[0]) == 1


def test_decode_below_threshold_dropped_and_best_class_only():
    out = _raw_output(
        [
            (20, 20, 10, 10, [0.2, 0.1, 0.0]),
            (70, 70, 10, 10, [0.3, 0.6, 0.4]),
            (40, 70, 8, 8, [0.0, 0.0, 0.25]),
        ],
        nc=3,
    )
    (det,) = decode_ultralytics(out, conf_threshold=0.25)
    assert det.shape == (1, 6)  # 0.25 itself is not above the threshold (as in Ultralytics)
    assert det[0, 5] == 1 and det[0, 4] == pytest.approx(0.6)  # one row per anchor: the best class
    assert len(decode_ultralytics(out, conf_threshold=0.1)[0]) == 3


def test_decode_max_detections_and_batch():
    rng = np.random.default_rng(0)
    n = 50
    anchors = [(20.0 * i + 10, 10, 10, 10, [float(s)]) for i, s in enumerate(rng.uniform(0.3, 1.0, n))]
    out = _raw_output(anchors, nc=1)
    batch = np.concatenate([out, np.zeros_like(out)])  # second image: nothing above threshold
    dets = decode_ultralytics(batch, max_detections=7)
    assert len(dets) == 2
    assert dets[0].shape == (7, 6) and dets[1].shape == (0, 6)
    top = np.sort([a[4][0] for a in anchors])[::-1][:7]
    np.testing.assert_allclose(dets[0][:, 4], top, rtol=1e-6)


@pytest.mark.parametrize("multi_label", [False, True])
def test_decode_matches_ultralytics_nms(multi_label):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(3)
    nc, anchors = 4, 400
    out = np.empty((2, 4 + nc, anchors), dtype=np.float32)
    out[:, 0:2] = rng.uniform(0, 160, (2, 2, anchors))
    out[:, 2:4] = rng.uniform(5, 60, (2, 2, anchors))
    out[:, 4:] = rng.uniform(0, 1, (2, nc, anchors)) ** 3
    out[1, 4:, :100] = 0  # some anchors below threshold in every class
    ours = decode_ultralytics(out, 0.2, 0.5, 40, multi_label=multi_label)
    theirs = non_max_suppression(torch.from_numpy(out), 0.2, 0.5, multi_label=multi_label, max_det=40)
    for a, b in zip(ours, theirs, strict=True):
        b = b.numpy()
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------- helpers


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 5, 5]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[1, 1 / 3, 0], [0.25, 0, 0]], atol=1e-6)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_yolo_labels_to_xyxy():
    labels = np.array([[2, 0.5, 0.5, 0.5, 0.25], [0, 0.1, 0.2, 0.2, 0.4]], dtype=np.float32)
    xyxy = yolo_labels_to_xyxy(labels, 200, 100)
    np.testing.assert_allclose(xyxy, [[2, 50, 37.5, 150, 62.5], [0, 0, 0, 40, 40]], atol=1e-4)
    assert yolo_labels_to_xyxy(np.zeros((0, 5)), 10, 10).shape == (0, 5)
    assert xyxy is not labels


# ---------------------------------------------------------------- detection_metrics


# Ultralytics' compute_ap closes the precision envelope with a 0 at recall 1.0, so the last of the 101 COCO
# points is interpolated to 0 and even a perfect curve scores (100 - 0.5) / 100 = 0.995. We reproduce that
# on purpose: our figures must read the same as what Ultralytics users see.
PERFECT_AP = 0.995


def _gt(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _pred(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def test_metrics_perfect_predictions():
    gts = [_gt([0, 10, 10, 50, 50], [1, 60, 60, 90, 95]), _gt([2, 0, 0, 30, 40])]
    preds = [
        _pred([10, 10, 50, 50, 0.9, 0], [60, 60, 90, 95, 0.8, 1]),
        _pred([0, 0, 30, 40, 0.7, 2]),
    ]
    m = detection_metrics(preds, gts, num_classes=3)
    assert m["mAP50-95"] == pytest.approx(PERFECT_AP, abs=1e-6)
    assert m["mAP50"] == pytest.approx(PERFECT_AP, abs=1e-6)
    assert m["precision"] == pytest.approx(1.0, abs=1e-6)
    assert m["recall"] == pytest.approx(1.0, abs=1e-6)


def test_metrics_no_predictions_and_empty_inputs():
    gts = [_gt([0, 10, 10, 50, 50]), _gt()]
    m = detection_metrics([_pred(), _pred()], gts, num_classes=1)
    assert m == {"mAP50-95": 0.0, "mAP50": 0.0, "precision": 0.0, "recall": 0.0}
    for args in (([], []), ([_pred()], [_gt()]), ([_pred([0, 0, 5, 5, 0.9, 0])], [_gt()])):
        m = detection_metrics(*args, num_classes=2)
        assert m == {"mAP50-95": 0.0, "mAP50": 0.0, "precision": 0.0, "recall": 0.0}
        assert not any(np.isnan(v) for v in m.values())


def test_metrics_shifted_box_counts_at_50_not_at_95():
    # 100 x 100 box shifted by 24 px: IoU = 76 / 124 = 0.613 -> true positive at 0.50, 0.55, 0.60 only
    gts = [_gt([0, 0, 0, 100, 100])]
    preds = [_pred([24, 0, 124, 100, 0.9, 0])]
    m = detection_metrics(preds, gts, num_classes=1)
    assert m["mAP50"] == pytest.approx(PERFECT_AP, abs=1e-6)
    assert m["mAP50-95"] == pytest.approx(0.3 * PERFECT_AP, abs=1e-6)


def test_metrics_wrong_class_and_duplicates_are_false_positives():
    gts = [_gt([0, 0, 0, 100, 100])]
    wrong_class = detection_metrics([_pred([0, 0, 100, 100, 0.9, 1])], gts, num_classes=2)
    assert wrong_class["mAP50"] == 0.0
    # a duplicate below the true match costs nothing in AP; one ranked above it halves precision
    dup = detection_metrics([_pred([0, 0, 100, 100, 0.5, 0], [1, 1, 99, 99, 0.9, 0])], gts, num_classes=1)
    assert dup["mAP50"] == pytest.approx(PERFECT_AP)  # the 0.9 one matches first (IoU 0.96)
    late = detection_metrics([_pred([0, 0, 100, 100, 0.5, 0], [300, 300, 310, 310, 0.9, 0])], gts, 1)
    assert 0.4 < late["mAP50"] < 0.6


def test_metrics_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="outside"):
        detection_metrics([_pred()], [_gt([3, 0, 0, 1, 1])], num_classes=3)


def _random_case(rng: np.random.Generator, images: int, nc: int):
    """GT boxes and noisy predictions: jittered copies (some relabelled), duplicates and pure false positives."""
    preds, gts = [], []
    for _ in range(images):
        m = int(rng.integers(0, 7))
        xy = rng.uniform(0, 300, (m, 2))
        wh = rng.uniform(10, 120, (m, 2))
        gt = np.concatenate([rng.integers(0, nc, (m, 1)), xy, xy + wh], axis=1)
        rows = []
        for c, x1, y1, x2, y2 in gt:
            for _ in range(int(rng.integers(0, 3))):
                w, h = x2 - x1, y2 - y1
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                cls = c if rng.random() < 0.85 else rng.integers(0, nc)
                rows.append(
                    [x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3], rng.random(), cls]
                )
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(10, 120, 2)
            rows.append([x, y, x + w, y + h, rng.random() * 0.6, rng.integers(0, nc)])
        pred = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        pred[:, [2, 3]] = np.maximum(pred[:, [2, 3]], pred[:, [0, 1]] + 1)
        preds.append(pred)
        gts.append(gt.reshape(-1, 5))
    return preds, gts


def _ultralytics_metrics(preds, gts):
    """The same figures through Ultralytics' own matcher and ap_per_class (as its DetectionValidator does)."""
    from types import SimpleNamespace

    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class
    from ultralytics.utils.metrics import box_iou as torch_box_iou

    validator = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, classes, targets = [], [], [], []
    for pred, gt in zip(preds, gts, strict=True):
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]  # NMS output order: descending confidence
        if len(pred) and len(gt):
            iou = torch_box_iou(torch.from_numpy(gt[:, 1:]), torch.from_numpy(pred[:, :4]))
            tp = BaseValidator.match_predictions(
                validator, torch.from_numpy(pred[:, 5]), torch.from_numpy(gt[:, 0]), iou
            ).numpy()
        else:
            tp = np.zeros((len(pred), 10), dtype=bool)
        tps.append(tp)
        confs.append(pred[:, 4])
        classes.append(pred[:, 5])
        targets.append(gt[:, 0])
    _, _, p, r, _, ap, *_ = ap_per_class(
        np.concatenate(tps), np.concatenate(confs), np.concatenate(classes), np.concatenate(targets)
    )
    return {
        "mAP50-95": float(ap.mean()) if len(ap) else 0.0,
        "mAP50": float(ap[:, 0].mean()) if len(ap) else 0.0,
        "precision": float(p.mean()) if len(p) else 0.0,
        "recall": float(r.mean()) if len(r) else 0.0,
    }, np.concatenate(tps)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_metrics_match_ultralytics(seed):
    pytest.importorskip("ultralytics")
    rng = np.random.default_rng(seed)
    nc = 4
    preds, gts = _random_case(rng, images=40, nc=nc)
    expected, expected_tp = _ultralytics_metrics(preds, gts)

    ours_tp = []
    for pred, gt in zip(preds, gts, strict=True):
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]
        ours_tp.append(match_predictions(pred[:, 5], gt[:, 0], box_iou(gt[:, 1:], pred[:, :4])))
    np.testing.assert_array_equal(np.concatenate(ours_tp), expected_tp)

    ours = detection_metrics(preds, gts, num_classes=nc)
    assert 0.05 < ours["mAP50-95"] < ours["mAP50"] < 0.95  # a non-trivial case
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
