"""Pre- and postprocessing from the manifest, NMS, drift statistics and counters, in process."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device_agent.errors import InferenceInputError
from device_agent.metrics import InferenceMetrics, percentile
from device_agent.pipeline import Pipeline
from device_agent.postprocess import classify, detect, nms
from device_agent.preprocess import ImagePreprocessor, Placement, conform, drift_view, load_tensors, quantize
from device_agent.runtimes import SessionOptions, TensorInfo
from edgebundle.manifest import NMSParams, Preprocessing
from edgewire.drift import DriftAccumulator
from tests.device_agent.bundles import LABELS, classifier_bundle, detector_bundle, expected_logits


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def pipeline_for(built, metrics: InferenceMetrics | None = None) -> Pipeline:
    return Pipeline(
        built.folder, built.manifest, "a", SessionOptions(threads=1), metrics or InferenceMetrics()
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, signing):
    return classifier_bundle(tmp_path_factory.mktemp("cls"), signing.private, 3)


def test_an_image_is_classified_like_the_manifest_says(classifier):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    result = pipeline_for(classifier).infer_image(png(image), top_k=4)
    # The same preprocessing by hand: stretch to 8x8 (PIL bilinear), /255, NCHW.
    resized = np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255
    logits = expected_logits(resized.transpose(2, 0, 1)[None], 3)[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [p.class_id for p in result.predictions] == list(np.argsort(-want))
    assert [p.label for p in result.predictions] == [LABELS[i] for i in np.argsort(-want)]
    np.testing.assert_allclose([p.score for p in result.predictions], np.sort(want)[::-1], rtol=1e-5)
    assert result.model.version == 3 and result.model.slot == "a"


def test_a_raw_tensor_gives_the_exact_outputs(classifier):
    x = np.random.default_rng(1).uniform(size=(1, 3, 8, 8)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x[0])  # the batch axis may be left out
    result = pipeline_for(classifier).infer_tensors(buffer.getvalue())
    np.testing.assert_allclose(result.outputs[0], expected_logits(x, 3), rtol=1e-5, atol=1e-6)
    body = result.to_json(include_outputs=True)
    assert (
        body["outputs"][0]["shape"] == [1, 4] and len(body["predictions"]) == 1
    )  # the best class by default


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image at all", "cannot decode"),
        (np.zeros((3, 9, 8), np.float32), "needs shape"),
        (np.zeros((1, 3, 8, 8), np.complex64), "cannot be converted"),
    ],
)
def test_bad_inputs_are_refused_with_a_hint(classifier, data, message):
    pipeline = pipeline_for(classifier)
    with pytest.raises(InferenceInputError, match=message) as caught:
        if isinstance(data, bytes):
            pipeline.infer_image(data)
        else:
            buffer = io.BytesIO()
            np.save(buffer, data)
            pipeline.infer_tensors(buffer.getvalue())
    assert caught.value.hint
    assert pipeline.metrics.errors_total == 0, "a bad request is not an inference error"


def test_letterbox_keeps_the_aspect_and_boxes_map_back_to_the_original():
    pre = Preprocessing(
        layout="NHWC", resize_mode="letterbox", letterbox_fill=114, scale=1.0, mean=[0.0], std=[1.0]
    )
    info = TensorInfo("x", (1, 64, 64, 3), "float32")
    image = np.full(
        (32, 128, 3), 200, dtype=np.uint8
    )  # 128 wide, 32 high: ratio 0.5, 16 rows of padding each side
    model_input, floats, placement = ImagePreprocessor(pre, info)(png(image))
    assert model_input.shape == (1, 64, 64, 3) and floats.shape == (1, 64, 64, 3)
    assert placement == Placement(128, 32, 0.5, 0.5, 0, 24)
    assert (model_input[0, :24] == 114).all() and (model_input[0, 40:] == 114).all()
    assert (model_input[0, 24:40] == 200).all()
    raw = np.zeros((1, 6, 2), dtype=np.float32)
    raw[0, :, 0] = [32, 32, 16, 8, 0.9, 0.1]  # cx, cy, w, h in model pixels; two class scores
    raw[0, :, 1] = [8, 26, 8, 8, 0.1, 0.8]  # reaches into the padding above the image
    inside, edge = detect(raw, NMSParams(), ["a", "b"], placement)
    np.testing.assert_allclose(inside.box, [24 / 0.5, (28 - 24) / 0.5, 40 / 0.5, (36 - 24) / 0.5], atol=1e-4)
    assert inside.label == "a" and inside.score == pytest.approx(0.9)
    np.testing.assert_allclose(
        edge.box, [4 / 0.5, 0, 12 / 0.5, (30 - 24) / 0.5], atol=1e-4
    )  # clipped at the top


@pytest.mark.parametrize(
    ("color", "layout", "dtype", "quant"),
    [
        ("RGB", "NCHW", "float32", None),
        ("BGR", "NHWC", "float32", None),
        ("GRAY", "NCHW", "float16", None),
        ("RGB", "NHWC", "int8", (1 / 255, -128)),
        ("RGB", "NHWC", "uint8", None),
    ],
)
def test_colour_layout_normalization_and_input_dtypes(color, layout, dtype, quant):
    channels = 1 if color == "GRAY" else 3
    shape = (1, channels, 4, 4) if layout == "NCHW" else (1, 4, 4, channels)
    pre = Preprocessing(
        layout=layout, color=color, scale=1 / 255, mean=[0.5] * channels, std=[0.25] * channels
    )
    image = np.random.default_rng(2).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    model_input, floats, _ = ImagePreprocessor(pre, TensorInfo("x", shape, dtype, quant))(png(image))
    pixels = image.astype(np.float32)
    if color == "GRAY":
        pixels = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float32)[:, :, None]
    elif color == "BGR":
        pixels = pixels[:, :, ::-1]
    want = (pixels / 255 - 0.5) / 0.25
    want = want.transpose(2, 0, 1)[None] if layout == "NCHW" else want[None]
    np.testing.assert_allclose(floats, want, rtol=1e-5, atol=1e-5)
    assert model_input.dtype == np.dtype(dtype) and model_input.shape == shape
    if quant:
        np.testing.assert_array_equal(model_input, np.clip(np.round(want / quant[0]) + quant[1], -128, 127))
    if dtype == "uint8":  # an integer input without quantization takes the pixels themselves
        np.testing.assert_array_equal(model_input[0], image)


def test_raw_tensors_are_quantized_or_cast_only_when_safe():
    spec = TensorInfo("x", (1, 4), "int8", (0.5, 3))
    np.testing.assert_array_equal(
        conform(np.array([[1.0, -2.0, 100.0, 0.2]], np.float32), spec), [[5, -1, 127, 3]]
    )
    np.testing.assert_array_equal(quantize(np.array([-1000.0]), "int8", (0.5, 3)), [-128])
    assert conform(np.array([[1, 2, 3, 4]], np.int32), TensorInfo("ids", (1, 4), "int64")).dtype == np.int64
    with pytest.raises(InferenceInputError):
        conform(np.array([[1.5, 2, 3, 4]]), TensorInfo("ids", (1, 4), "int64"))
    with pytest.raises(InferenceInputError):
        conform(np.array([[1, 2, 300, 4]], np.int32), TensorInfo("ids", (1, 4), "int8"))
    buffer = io.BytesIO()
    np.savez(buffer, mask=np.ones((1, 4), np.int64), ids=np.arange(4)[None])
    ids, mask = load_tensors(
        buffer.getvalue(), [TensorInfo("ids", (1, 4), "int64"), TensorInfo("mask", (1, 4), "int64")]
    )
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1]])


def brute_force_nms(boxes, scores, iou_threshold):
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    kept = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if all(iou(boxes[i], boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(200, 2))
    wh = rng.uniform(5, 40, size=(200, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.permutation(200) / 200.0  # distinct scores: one right answer
    for threshold in (0.3, 0.5, 0.7):
        assert list(nms(boxes, scores, threshold, 1000)) == brute_force_nms(boxes, scores, threshold)
    assert len(nms(boxes, scores, 0.5, 3)) == 3


def test_detection_filters_suppresses_per_class_and_caps():
    anchors = [
        # cx, cy, w, h, score class 0, score class 1
        (20, 20, 10, 10, 0.90, 0.0),
        (21, 20, 10, 10, 0.80, 0.0),  # overlaps the first, same class: suppressed
        (21, 21, 10, 10, 0.0, 0.85),  # overlaps too, other class: kept
        (50, 50, 10, 10, 0.20, 0.1),  # below the confidence threshold
        (50, 50, 10, 10, 0.60, 0.0),
    ]
    raw = np.array(anchors, dtype=np.float32).T[None]
    found = detect(raw, NMSParams(conf_threshold=0.25, iou_threshold=0.5), ["a", "b"], None)
    assert [(d.class_id, round(d.score, 2)) for d in found] == [(0, 0.9), (1, 0.85), (0, 0.6)]
    np.testing.assert_allclose(found[0].box, (15, 15, 25, 25))
    assert len(detect(raw, NMSParams(max_detections=1), ["a", "b"], None)) == 1


@pytest.mark.parametrize("boxes", ["pixels", "normalized"])
def test_a_detector_bundle_answers_boxes_in_image_pixels(tmp_path, signing, boxes):
    """Box rows in input pixels, or normalized to 0..1 as TFLite detectors give them (the manifest says)."""
    raw = np.zeros((1, 6, 3), dtype=np.float32)
    raw[0, :, 0] = [32, 32, 20, 20, 0.95, 0.0]
    raw[0, :, 1] = [33, 32, 20, 20, 0.70, 0.0]
    raw[0, :, 2] = [10, 10, 4, 4, 0.0, 0.5]
    if boxes == "normalized":
        raw[0, :4] /= 64  # the input is 64x64
    built = detector_bundle(tmp_path, signing.private, raw, boxes=boxes)
    result = pipeline_for(built).infer_image(png(np.zeros((64, 128, 3), np.uint8)))
    assert [(d.label, round(d.score, 2)) for d in result.detections] == [("square", 0.95), ("circle", 0.5)]
    # 128x64 letterboxed into 64x64: ratio 0.5, 16 rows of padding on top.
    np.testing.assert_allclose(
        result.detections[0].box, [(22 - 0) / 0.5, (22 - 16) / 0.5, 42 / 0.5, (42 - 16) / 0.5], atol=1e-3
    )


def test_drift_statistics_on_a_subsample_match_the_full_input(classifier):
    x = np.random.default_rng(3).normal(0.5, 0.2, size=(1, 3, 224, 224)).astype(np.float32)
    view = drift_view(x, "NCHW")
    assert view.shape[2] * view.shape[3] <= 4096
    full, sampled = DriftAccumulator("classify", 4, "NCHW"), DriftAccumulator("classify", 4, "NCHW")
    full.add(x, [np.zeros((1, 4))])
    sampled.add(view, [np.zeros((1, 4))])
    np.testing.assert_allclose(sampled.summary().input_mean, full.summary().input_mean, atol=0.01)
    np.testing.assert_allclose(sampled.summary().input_std, full.summary().input_std, atol=0.01)

    pipeline = pipeline_for(classifier)
    for _ in range(7):
        pipeline.infer_tensors([np.full((1, 3, 8, 8), 0.25, np.float32)])
    summary = pipeline.take_drift()
    assert summary.samples == 7 and summary.input_mean == pytest.approx([0.25] * 3)
    assert sum(summary.confidence_hist) == 7 and len(summary.class_hist) >= 1
    assert pipeline.take_drift() is None, "each summary covers one interval"

    sampled = Pipeline(
        classifier.folder, classifier.manifest, "a", SessionOptions(), InferenceMetrics(), drift_per_s=0.01
    )
    for _ in range(5):
        sampled.infer_tensors([np.zeros((1, 3, 8, 8), np.float32)])
    assert sampled.take_drift().samples == 1, "at most drift_per_s samples a second, whatever the throughput"


def test_inference_counters_give_percentiles_and_prometheus_histograms():
    metrics = InferenceMetrics()
    for latency in range(1, 101):
        metrics.record(float(latency))
    metrics.error()
    stats, elapsed = metrics.take_interval()
    assert (stats.count, stats.errors) == (100, 1)
    assert stats.latency_ms_p50 == pytest.approx(50.5) and stats.latency_ms_p95 == pytest.approx(95.05)
    assert stats.throughput_per_s == pytest.approx(100 / elapsed, rel=0.01)
    assert metrics.take_interval()[0].count == 0
    text = "\n".join(metrics.prometheus())
    assert 'edgectl_agent_inference_latency_seconds_bucket{le="0.05"} 50' in text
    assert 'edgectl_agent_inference_latency_seconds_bucket{le="+Inf"} 100' in text
    assert "edgectl_agent_inference_errors_total 1" in text
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(np.percentile([1, 2, 3, 4], 50))


def test_classify_accepts_probabilities_or_logits():
    assert classify(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"], 1)[0].label == "b"
    top = classify(np.array([[2.0, 1.0, 0.0]]), [], 3)
    assert [p.class_id for p in top] == [0, 1, 2] and top[0].label is None
    assert sum(p.score for p in top) == pytest.approx(1.0)


def test_tensor_models_refuse_images_with_a_reason(tmp_path, signing):
    built = classifier_bundle(tmp_path, signing.private, 1)
    manifest = built.manifest.model_copy(
        update={"preprocessing": built.manifest.preprocessing.model_copy(update={"input": "tensor"})}
    )
    pipeline = Pipeline(Path(built.folder), manifest, "a", SessionOptions(), InferenceMetrics())
    with pytest.raises(InferenceInputError, match="takes tensors"):
        pipeline.infer_image(png(np.zeros((8, 8, 3), np.uint8)))
