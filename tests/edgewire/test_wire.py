"""The fleet wire contract: topics, payloads, signed rollback orders and drift statistics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from edgebundle import generate_keypair, load_private_key, load_public_key
from edgebundle.manifest import CONFIDENCE_BINS, DriftSummary
from edgewire import DesiredModel, Presence, Telemetry, Topics, UpdateStatus, new_message_id, parse_topic
from edgewire.commands import RollbackRefused, sign_rollback, verify_rollback
from edgewire.drift import DriftAccumulator, mean_shift_z, merge, psi, summarize, top_predictions
from edgewire.messages import MAX_PAYLOAD_BYTES, PayloadError, dump_payload, parse_payload
from edgewire.topics import data_subscription


def test_importing_the_contract_pulls_in_nothing_heavy():
    code = "import sys, edgewire, edgewire.drift; print(sorted(m for m in ('numpy', 'torch', 'paho') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_topics_keep_data_and_commands_apart():
    topics = Topics("plant-7", "cam-01")
    assert topics.telemetry == "edgectl/data/plant-7/cam-01/telemetry"
    assert topics.presence == "edgectl/data/plant-7/cam-01/presence"
    assert topics.update == "edgectl/data/plant-7/cam-01/update"
    assert topics.desired == "edgectl/cmd/plant-7/cam-01/desired"
    assert topics.command_subscription == "edgectl/cmd/plant-7/cam-01/#"
    assert data_subscription() == "edgectl/data/#"
    assert data_subscription("registry") == "$share/registry/edgectl/data/#"
    parsed = parse_topic(topics.telemetry)
    assert (parsed.direction, parsed.fleet, parsed.device, parsed.kind) == (
        "data",
        "plant-7",
        "cam-01",
        "telemetry",
    )


@pytest.mark.parametrize("bad", ["Cam", "cam/1", "+", "#", "", "-x", "a" * 64, "cam 1", "cam\n"])
def test_ids_cannot_widen_a_subscription(bad):
    with pytest.raises(ValueError, match="lowercase"):
        Topics("fleet", bad)
    with pytest.raises(ValueError):
        Topics(bad, "device")


def test_an_id_with_a_final_newline_is_refused_by_every_check():
    """Python's `$` matches before a final newline: "cam\n" passed the id check once; pydantic's pattern
    (Rust's regex) and the topic parser must agree that it is not an id."""
    assert parse_topic("edgectl/data/f/cam\n/telemetry") is None
    with pytest.raises(ValidationError):
        _telemetry(device="cam\n")
    with pytest.raises(ValidationError):
        _telemetry(fleet="f\n")
    assert _telemetry(device="cam-1").device == "cam-1"


@pytest.mark.parametrize(
    "topic",
    [
        "edgectl/data/f/d",
        "edgectl/data/f/d/telemetry/x",
        "other/data/f/d/telemetry",
        "edgectl/cmd/f/d/telemetry",
        "edgectl/data/F/d/telemetry",
        "edgectl/data/f/d/desired",
    ],
)
def test_foreign_topics_are_ignored(topic):
    assert parse_topic(topic) is None


def _telemetry(**update) -> Telemetry:
    base = dict(
        fleet="f",
        device="d",
        msg_id=new_message_id(),
        seq=4,
        sent_at=1.0,
        interval_s=10.0,
        inference={"count": 3, "errors": 0, "latency_ms_p50": 1.5, "latency_ms_p95": 2.0},
    )
    return Telemetry.model_validate({**base, **update})


def test_payloads_round_trip_through_their_topic_kind():
    message = _telemetry(drift=DriftSummary(samples=3, input_mean=[0.1], input_std=[0.2]))
    assert parse_payload("telemetry", dump_payload(message)) == message
    presence = Presence(fleet="f", device="d", state="offline", session=7, at=2.0)
    assert parse_payload("presence", dump_payload(presence)) == presence
    status = UpdateStatus(
        fleet="f",
        device="d",
        msg_id=new_message_id(),
        seq=5,
        sent_at=3.0,
        update_id="r1-v2",
        model="m",
        from_version=1,
        to_version=2,
        state="HEALTHCHECK",
    )
    assert parse_payload("update", dump_payload(status)).state == "HEALTHCHECK"


@pytest.mark.parametrize(
    ("kind", "payload", "needle"),
    [
        ("telemetry", b"{not json", "bad telemetry payload"),
        ("telemetry", json.dumps({"fleet": "f"}).encode(), "bad telemetry payload"),
        ("presence", b"x" * (MAX_PAYLOAD_BYTES + 1), "limit"),
        ("weather", b"{}", "no payload schema"),
        ("update", json.dumps({"state": "EXPLODED"}).encode(), "bad update payload"),
    ],
)
def test_bad_payloads_are_one_error(kind, payload, needle):
    with pytest.raises(PayloadError, match=needle):
        parse_payload(kind, payload)


def test_unknown_fields_and_nan_are_refused():
    with pytest.raises(ValueError):
        _telemetry(extra_field=1)
    with pytest.raises(ValueError):
        _telemetry(inference={"count": 1, "errors": 0, "latency_ms_p50": float("nan")})


def test_drift_summaries_refuse_negative_counts_and_mismatched_shapes():
    good = _telemetry(drift=DriftSummary(samples=3, confidence_hist=[0] * CONFIDENCE_BINS)).model_dump()
    for drift, needle in (
        ({"samples": 3, "class_hist": [2, -1]}, "class_hist.1"),
        ({"samples": 3, "confidence_hist": [-1] + [0] * (CONFIDENCE_BINS - 1)}, "confidence_hist.0"),
        ({"samples": 3, "confidence_hist": [1, 2]}, f"needs {CONFIDENCE_BINS} bins"),
        ({"samples": 3, "input_mean": [0.1], "input_std": []}, "one value per channel"),
    ):
        with pytest.raises(PayloadError, match="bad telemetry payload") as refused:
            parse_payload("telemetry", json.dumps({**good, "drift": drift}).encode())
        assert needle in str(refused.value.__cause__)


def test_rollback_orders_are_bound_to_device_model_version_and_time(tmp_path):
    private_path, public_path = generate_keypair(tmp_path / "registry")
    private, public = load_private_key(private_path), load_public_key(public_path)
    order = sign_rollback(private, device="cam-01", model="digits", version=3, reason="p95 +40%", now=1000.0)
    verify_rollback(order, [public], device="cam-01", model="digits", version=3, now=2000.0)
    desired = DesiredModel(
        msg_id=new_message_id(),
        update_id="rb-1",
        issued_at=1.0,
        model="digits",
        version=3,
        target="rpi5",
        archive_sha256="0" * 64,
        archive_size=10,
        url="/v1/device/bundles/" + "0" * 64,
        rollback=order,
    )
    assert parse_payload("desired", dump_payload(desired)).rollback == order
    for device, model, version in [("cam-02", "digits", 3), ("cam-01", "other", 3), ("cam-01", "digits", 2)]:
        with pytest.raises(RollbackRefused, match="is for"):
            verify_rollback(order, [public], device=device, model=model, version=version, now=2000.0)
    with pytest.raises(RollbackRefused, match="expired"):
        verify_rollback(order, [public], device="cam-01", model="digits", version=3, now=1000.0 + 8 * 86400)
    forged = order.model_copy(update={"version": 1})
    with pytest.raises(RollbackRefused, match="does not verify"):
        verify_rollback(forged, [public], device="cam-01", model="digits", version=1, now=2000.0)
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(RollbackRefused, match="does not pin"):
        verify_rollback(
            order, [load_public_key(other_public)], device="cam-01", model="digits", version=3, now=2000.0
        )


def test_drift_summary_of_a_classifier():
    rng = np.random.default_rng(0)
    inputs = rng.normal(0.3, 0.1, size=(200, 3, 4, 4))
    logits = np.zeros((200, 4))
    logits[np.arange(200), np.arange(200) % 4] = 10.0  # sure of every answer, classes balanced
    summary = summarize(inputs, [logits], "classify", "NCHW", 4)
    assert summary.samples == 200 and len(summary.input_mean) == 3
    np.testing.assert_allclose(summary.input_mean, 0.3, atol=0.01)
    np.testing.assert_allclose(summary.input_std, 0.1, atol=0.01)
    assert summary.confidence_hist == [0] * (CONFIDENCE_BINS - 1) + [200]
    assert summary.class_hist == [50, 50, 50, 50]
    nhwc = summarize(inputs.transpose(0, 2, 3, 1), [logits], "classify", "NHWC", 4)
    np.testing.assert_allclose(nhwc.input_mean, summary.input_mean)


def test_probabilities_are_not_softmaxed_twice_and_detections_use_their_best_score():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    confidence, classes = top_predictions([probs], "classify")
    np.testing.assert_allclose(confidence, [0.7, 0.8])
    assert list(classes) == [0, 2]
    detections = np.zeros((1, 4 + 2, 5))
    detections[0, 5, 3] = 0.9  # class 1 at anchor 3
    confidence, classes = top_predictions([detections], "detect")
    assert confidence[0] == pytest.approx(0.9) and classes[0] == 1
    assert top_predictions([np.zeros((1, 8))], "other") is None


def test_merging_summaries_equals_summarizing_everything():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (30, 2)), rng.normal(2, 3, (70, 2))
    logits_a, logits_b = rng.normal(size=(30, 5)), rng.normal(size=(70, 5))
    parts = [summarize(a, [logits_a], "classify", None, 5), summarize(b, [logits_b], "classify", None, 5)]
    whole = summarize(np.concatenate([a, b]), [np.concatenate([logits_a, logits_b])], "classify", None, 5)
    merged = merge(parts)
    assert merged.samples == 100
    np.testing.assert_allclose(merged.input_mean, whole.input_mean)
    np.testing.assert_allclose(merged.input_std, whole.input_std)
    assert merged.confidence_hist == whole.confidence_hist and merged.class_hist == whole.class_hist


def test_accumulator_adds_batches_like_one_dataset():
    rng = np.random.default_rng(2)
    x, logits = rng.random((40, 1, 8, 8)), rng.normal(size=(40, 10))
    accumulator = DriftAccumulator("classify", 10, "NCHW")
    for i in range(40):
        accumulator.add(x[i : i + 1], [logits[i : i + 1]])
    assert accumulator.summary() == summarize(x, [logits], "classify", "NCHW", 10)


def test_psi_and_mean_shift_grow_with_the_shift():
    reference = [10, 20, 40, 20, 10]
    assert psi(reference, reference) == 0.0
    assert psi(reference, [12, 20, 38, 20, 10]) < 0.01
    assert psi(reference, [40, 20, 10, 20, 10]) > 0.25
    same = DriftSummary(samples=100, input_mean=[0.5], input_std=[0.1])
    shifted = DriftSummary(samples=100, input_mean=[0.6], input_std=[0.1])
    assert mean_shift_z(same, same) == 0.0
    assert mean_shift_z(same, shifted) > 5.0
