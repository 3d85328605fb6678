"""Validation: an artifact against the FP32 source on the user's data. One place decides what fails.

Task metrics are in points (percent): top-1 for classifiers, mAP50-95 and
mAP50 for detectors. Fidelity compares raw outputs sample by sample. The gate
is the drop of the task metric against `--max-drop`, and the report's `gate`
says which one judged:

- `labels`: the task metric on the user's labeled `--val` data;
- `fp32-detections`: a detector without labels is scored with mAP50-95 against
  the FP32 model's own detections on the calibration images (conf 0.25, the
  source's NMS), so a detector that finds nothing fails however close its raw
  outputs are (a full-INT8 YOLO that detects nothing keeps an output cosine of
  0.9999 on the tests' YOLO11n: its boxes dominate the output and survive, its
  scores do not);
- `top1-agreement`: a classifier without labels agrees with FP32's top-1;
- `output-cosine`: other models, raw outputs against FP32's. Never a detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgebundle.manifest import Fidelity, NMSParams, Task, ValidationReport
from toolchain.errors import CalibrationError

# Without labels a classifier may disagree with FP32 on at most max_drop points of
# samples; other tasks need this cosine between raw outputs (a weaker gate, stated in the notes).
MIN_COSINE_WITHOUT_LABELS = 0.98
# Ultralytics scores mAP with a near-zero confidence threshold and multi-label NMS; so do we, so the
# figures match what Ultralytics users see for the same model and data.
MAP_CONF_THRESHOLD = 0.001
# Without labels, FP32's detections above this confidence (Ultralytics' predict default) are the ground truth.
LABEL_FREE_CONF_THRESHOLD = 0.25


@dataclass
class EvalData:
    """The samples an artifact is judged on, with labels when the user gave a validation set."""

    kind: str  # "val" or "calib"
    task: Task
    inputs: np.ndarray
    labels: np.ndarray | None = None
    boxes: list[np.ndarray] | None = None
    class_names: list[str] = field(default_factory=list)
    num_classes: int = 0
    ground_truth: str = "labels"  # "labels" (the user's) or "fp32" (the FP32 model's own detections)

    @property
    def labeled(self) -> bool:
        return self.labels is not None or self.boxes is not None

    @property
    def metric(self) -> str | None:
        if not self.labeled:
            return None
        return "top1" if self.task == "classify" else "mAP50-95"


def label_free_detection_data(
    inputs: np.ndarray, fp32_outputs: list[np.ndarray], nms: NMSParams | None
) -> EvalData:
    """Calibration images with the FP32 detector's own detections as their ground truth (no labels needed).

    Detections are decoded as a deployed detector would (conf 0.25, one class per box, the source's NMS
    IoU and detection cap); candidates are then scored with mAP50-95 against them.
    """
    from toolchain.detection import decode_ultralytics

    params = nms or NMSParams()
    boxes = []
    for out in fp32_outputs[0]:
        det = decode_ultralytics(
            out[None], LABEL_FREE_CONF_THRESHOLD, params.iou_threshold, params.max_detections
        )[0]
        boxes.append(np.concatenate([det[:, 5:6], det[:, :4]], axis=1).astype(np.float32))
    if not sum(len(b) for b in boxes):
        raise CalibrationError(
            f"without --val labels a detector is judged against its FP32 detections on the --calib images, "
            f"but FP32 detects nothing (conf >= {LABEL_FREE_CONF_THRESHOLD}) on any of the {len(inputs)}",
            hint="pass --calib images that show the objects the model detects, or --val with a labeled data.yaml",
        )
    return EvalData("calib", "detect", inputs, boxes=boxes, ground_truth="fp32")


def task_metrics(outputs: list[np.ndarray], data: EvalData, nms: NMSParams | None) -> dict[str, float]:
    if data.task == "classify" and data.labels is not None:
        top1 = float(np.mean(outputs[0].reshape(len(data.labels), -1).argmax(axis=1) == data.labels))
        return {"top1": round(100 * top1, 4)}
    if data.task == "detect" and data.boxes is not None:
        from toolchain.detection import decode_ultralytics, detection_metrics

        params = nms or NMSParams()
        predictions = [
            decode_ultralytics(
                out[None], MAP_CONF_THRESHOLD, params.iou_threshold, params.max_detections, multi_label=True
            )[0]
            for out in outputs[0]
        ]
        scores = detection_metrics(predictions, data.boxes, data.num_classes)
        return {k: round(100 * float(v), 4) for k, v in scores.items()}
    return {}


def align_outputs(reference: list[np.ndarray], artifact: list[np.ndarray]) -> list[np.ndarray]:
    """Bring an artifact's outputs into the reference's axis order (NHWC models may emit NHWC or NWC).

    Arrays are samples-first. A channels-last output whose transpose matches the reference's shape is
    transposed back; anything else is left for `fidelity` to compare as it is.
    """
    aligned = []
    for ref, art in zip(reference, artifact, strict=True):
        if art.shape != ref.shape:
            for axes in ((0, 3, 1, 2), (0, 2, 1)):
                if art.ndim == len(axes) and tuple(art.shape[a] for a in axes) == ref.shape:
                    art = art.transpose(axes)
                    break
        aligned.append(art)
    return aligned


def fidelity(reference: list[np.ndarray], artifact: list[np.ndarray], task: Task) -> Fidelity:
    ref = np.concatenate([r.reshape(len(r), -1) for r in reference], axis=1).astype(np.float64)
    art = np.concatenate([a.reshape(len(a), -1) for a in artifact], axis=1).astype(np.float64)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(art, axis=1)
    cosine = np.where(denom > 0, (ref * art).sum(axis=1) / np.maximum(denom, 1e-30), 1.0)
    agreement = None
    if task == "classify":
        first_ref = reference[0].reshape(len(reference[0]), -1)
        first_art = artifact[0].reshape(len(artifact[0]), -1)
        agreement = round(100 * float(np.mean(first_ref.argmax(1) == first_art.argmax(1))), 4)
    return Fidelity(
        cosine=round(float(cosine.mean()), 6),
        max_abs_error=float(np.abs(ref - art).max()),
        top1_agreement=agreement,
    )


def judge(
    data: EvalData,
    reference_outputs: list[np.ndarray],
    reference_metrics: dict[str, float],
    artifact_outputs: list[np.ndarray],
    nms: NMSParams | None,
    max_drop: float,
) -> ValidationReport:
    """Score an artifact's outputs and decide pass or fail; the caller decides what failing means."""
    fid = fidelity(reference_outputs, artifact_outputs, data.task)
    artifact_metrics = task_metrics(artifact_outputs, data, nms)
    notes: list[str] = []
    drop = None
    if data.metric:
        drop = round(reference_metrics[data.metric] - artifact_metrics[data.metric], 4)
        passed = drop <= max_drop
        gate = "fp32-detections" if data.ground_truth == "fp32" else "labels"
        if gate == "fp32-detections":
            count = sum(len(b) for b in data.boxes or [])
            notes.append(
                f"label-free ground truth: FP32's {count} detections (conf >= {LABEL_FREE_CONF_THRESHOLD}) "
                f"on the {len(data.inputs)} calibration images"
            )
    elif data.task == "classify":
        gate = "top1-agreement"
        passed = fid.top1_agreement is not None and 100 - fid.top1_agreement <= max_drop
    elif data.task == "detect":  # never judged on raw outputs: with no ground truth, nothing passes
        gate = None
        passed = False
        notes.append("a detector is gated on detections: give --val labels or --calib images")
    else:
        gate = "output-cosine"
        passed = fid.cosine >= MIN_COSINE_WITHOUT_LABELS
    return ValidationReport(
        data="val" if data.kind == "val" else "calib",
        samples=len(data.inputs),
        task=data.task,
        metric=data.metric,
        reference=reference_metrics,
        artifact=artifact_metrics,
        drop_points=drop,
        max_drop_points=max_drop,
        fidelity=fid,
        passed=passed,
        gate=gate,
        notes=notes,
    )
