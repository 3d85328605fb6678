"""Ultralytics detectors on iOS: the outputs Vision reads as recognized objects, and an NMS stage.

The package is a pipeline of two models:

    image ─▶ ML Program ─▶ raw_confidence (anchors × C), raw_coordinates (anchors × 4)
          ─▶ NonMaximumSuppression ─▶ confidence (≤ max × C), coordinates (≤ max × 4)
             (iouThreshold and confidenceThreshold are optional Double inputs)

Two reported failures of Ultralytics' own Core ML export shape this:

- "confidences stuck at 1.0": Core ML's NMS reads a confidence row as class probabilities whose sum is
  the confidence that an object is there, and Vision reports each label's share of that sum
  (NonMaximumSuppression.proto; Vision's recognized-object observation). A YOLO head gives independent
  per-class sigmoid scores, so passing them all makes the best label's share close to 1.0 whatever the
  score. Here each row keeps only its best class's score: the row sums to the detection's score
  (`VNRecognizedObjectObservation.confidence`), its label's share is 1, and Core ML's per-class NMS
  (suppression among boxes with the same argmax) is exactly Ultralytics' class-aware NMS with one class
  per box (`toolchain.detection.decode_ultralytics`).
- "box drift": coordinates are centre x, centre y, width, height relative to the model's input (each
  axis divided by its own size), so a letterboxed input must be mapped back (docs/ios.md, the Swift
  snippet); the ML Program's outputs are float32 because Core ML's NMS takes nothing else.

The confidence rows are zero-padded to a multiple of 80 columns: Ultralytics found Core ML's NMS after an
ML Program returning wrong or no boxes otherwise on iOS (ultralytics/ultralytics#22309, fixed by padding
in #22310). The padding labels never win: their scores are 0.
"""

from __future__ import annotations

import numpy as np

from edgebundle.manifest import NMSParams

RAW_CONFIDENCE = "raw_confidence"
RAW_COORDINATES = "raw_coordinates"
CONFIDENCE = "confidence"
COORDINATES = "coordinates"
IOU_INPUT = "iouThreshold"
CONFIDENCE_INPUT = "confidenceThreshold"
PAD_MULTIPLE = 80


def padded_columns(classes: int) -> int:
    return -(-classes // PAD_MULTIPLE) * PAD_MULTIPLE


def padding_labels(labels: list[str], columns: int) -> list[str]:
    return list(labels) + [f"unused_{i}" for i in range(len(labels), columns)]


def detector_head(classes: int, height: int, width: int):
    """The module after the network: (1, 4 + classes, anchors) -> confidence and coordinates for the NMS."""
    import torch

    class DetectorOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classes = classes
            self.pad = padded_columns(classes) - classes
            self.register_buffer("normalize", torch.tensor([1 / width, 1 / height, 1 / width, 1 / height]))

        def forward(self, raw):
            if isinstance(raw, (tuple, list)):
                raw = raw[0]
            rows = raw[0].transpose(0, 1)  # (anchors, 4 + classes) for the one image
            coordinates = rows[:, :4] * self.normalize
            scores = rows[:, 4 : 4 + self.classes]
            best, index = scores.max(dim=1, keepdim=True)
            confidence = torch.zeros_like(scores).scatter(1, index, best)  # the best class's score, alone
            if self.pad:
                confidence = torch.nn.functional.pad(confidence, (0, self.pad))
            return confidence, coordinates

    return DetectorOutputs().eval()


def nms_pipeline(ct, program, params: NMSParams, labels: list[str]):
    """`program` (an ML Program with the two raw outputs) followed by Core ML's NonMaximumSuppression."""
    from coremltools.proto import Model_pb2

    spec = program.get_spec()
    outputs = {o.name: o for o in spec.description.output}
    anchors = outputs[RAW_COORDINATES].type.multiArrayType.shape[0]
    limit = min(params.max_detections, anchors)
    nms = Model_pb2.Model()
    nms.specificationVersion = spec.specificationVersion
    for raw_name, name in ((RAW_CONFIDENCE, CONFIDENCE), (RAW_COORDINATES, COORDINATES)):
        nms.description.input.add().CopyFrom(outputs[raw_name])
        out = nms.description.output.add()
        out.CopyFrom(outputs[raw_name])
        out.name = name
        array = out.type.multiArrayType
        columns = array.shape[-1]
        del array.shape[:]
        rows = array.shapeRange.sizeRanges.add()
        rows.lowerBound, rows.upperBound = 0, limit  # at most `limit` boxes come out
        cols = array.shapeRange.sizeRanges.add()
        cols.lowerBound = cols.upperBound = columns
    for name in (IOU_INPUT, CONFIDENCE_INPUT):
        feature = nms.description.input.add()
        feature.name = name
        feature.type.doubleType.SetInParent()
        feature.type.isOptional = True  # Vision feeds only the image: the defaults below apply
    config = nms.nonMaximumSuppression
    config.confidenceInputFeatureName = RAW_CONFIDENCE
    config.coordinatesInputFeatureName = RAW_COORDINATES
    config.confidenceOutputFeatureName = CONFIDENCE
    config.coordinatesOutputFeatureName = COORDINATES
    config.iouThresholdInputFeatureName = IOU_INPUT
    config.confidenceThresholdInputFeatureName = CONFIDENCE_INPUT
    config.iouThreshold = params.iou_threshold
    config.confidenceThreshold = params.conf_threshold
    config.pickTop.perClass = True
    columns = outputs[RAW_CONFIDENCE].type.multiArrayType.shape[-1]
    config.stringClassLabels.vector.extend(padding_labels(labels, columns))

    pipeline = Model_pb2.Model()
    pipeline.specificationVersion = spec.specificationVersion
    pipeline.pipeline.models.add().CopyFrom(spec)
    pipeline.pipeline.models.add().CopyFrom(nms)
    description = pipeline.description
    description.input.add().CopyFrom(spec.description.input[0])
    for feature in nms.description.input[2:]:
        description.input.add().CopyFrom(feature)
    for feature in nms.description.output:
        description.output.add().CopyFrom(feature)
    description.input[1].shortDescription = f"optional, default {params.iou_threshold:g}"
    description.input[2].shortDescription = f"optional, default {params.conf_threshold:g}"
    description.output[0].shortDescription = "boxes × classes: each row holds its best class's score only"
    description.output[
        1
    ].shortDescription = "boxes × (centre x, centre y, width, height), relative to the input"
    description.metadata.CopyFrom(spec.description.metadata)
    return ct.models.MLModel(pipeline, weights_dir=program.weights_dir, skip_model_load=True)


def nms_reference(
    confidence: np.ndarray,
    coordinates: np.ndarray,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    per_class: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """What Core ML's NonMaximumSuppression (PickTop) returns, from its specification, in numpy.

    Boxes whose confidence (the row's best class here: every other column is 0) is below the threshold
    go first; then, best first, a box is kept and every box overlapping it by more than `iou_threshold`
    (among those with the same argmax class when `per_class`) is dropped. Returns the kept rows of
    `confidence` and `coordinates` (centre xywh), best first.
    """
    from toolchain.detection import _greedy_nms, xywh_to_xyxy

    confidence = np.asarray(confidence, dtype=np.float64)
    coordinates = np.asarray(coordinates, dtype=np.float64)
    scores = confidence.max(axis=1)
    keep = np.flatnonzero(scores >= conf_threshold)
    if keep.size == 0:
        return confidence[:0], coordinates[:0]
    boxes = xywh_to_xyxy(coordinates[keep])
    classes = confidence[keep].argmax(axis=1) if per_class else np.zeros(keep.size, dtype=np.int64)
    offset = (np.abs(boxes).max() * 2 + 1) * classes  # boxes of different classes never overlap
    kept = keep[_greedy_nms(boxes + offset[:, None], scores[keep], iou_threshold, max_detections)]
    return confidence[kept], coordinates[kept]
