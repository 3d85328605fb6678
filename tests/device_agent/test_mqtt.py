"""Telemetry, presence and commands over a real Mosquitto broker, through outages and agent kills."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from edgewire import Topics
from edgewire.drift import merge
from edgewire.messages import dump_payload, parse_payload
from edgewire.topics import parse_topic
from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import DEVICE, FLEET, wait_for, write_agent
from tests.device_agent.test_updates import ALL_STATES, X, serves
from tests.services import MqttCollector

TOPICS = Topics(FLEET, DEVICE)


def received(collector: MqttCollector, kind: str) -> list:
    """Parsed payloads of one kind, in arrival order (duplicates included)."""
    out = []
    for topic, payload, _ in list(collector.messages):
        parsed = parse_topic(topic)
        if parsed is not None and parsed.kind == kind and payload:
            out.append(parse_payload(kind, payload))
    return out


def outbox_state(data_dir) -> tuple[int, list[int], int]:
    """(last seq allocated, seqs still waiting, dropped) read straight from the agent's SQLite queue."""
    with sqlite3.connect(data_dir / "outbox.sqlite") as db:
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        waiting = [row[0] for row in db.execute("SELECT seq FROM messages ORDER BY id")]
    return counters.get("seq", 0), waiting, counters.get("dropped", 0)


@pytest.fixture
def collector(broker):
    sub = MqttCollector(broker.port, topic="edgectl/data/#").start()
    yield sub
    sub.stop()


def test_presence_is_retained_and_a_late_will_never_looks_newer(tmp_path, signing, broker, collector, agents):
    agent = agents(write_agent(tmp_path / "a", [signing.public_path], broker_port=broker.port))

    def presence():
        return received(collector, "presence")

    first = wait_for(lambda: [p for p in presence() if p.state == "online"], "online presence")[0]
    agent.kill()  # no goodbye: the broker publishes the Last Will
    will = wait_for(lambda: [p for p in presence() if p.state == "offline"], "the Last Will")[0]
    assert will.session == first.session
    agent.start()
    again = wait_for(
        lambda: [p for p in presence() if p.state == "online" and p.session > first.session], "online"
    )[0]
    # A registry that keeps the newest session ignores the Will of session 1 even if it came last.
    newest = max(presence(), key=lambda p: (p.session, p.at))
    assert newest.session == again.session and newest.state == "online"
    # A subscriber arriving now gets the retained presence: online, current session.
    late = MqttCollector(broker.port, topic=TOPICS.presence, client_id="late", persistent=False).start()
    retained = wait_for(lambda: late.messages, "the retained presence")[0]
    late.stop()
    assert retained[2] is True and parse_payload("presence", retained[1]).session == again.session
    assert agent.terminate() == 0
    goodbye = wait_for(
        lambda: [p for p in presence() if p.state == "offline" and p.session == again.session], "goodbye"
    )
    assert goodbye


def test_a_broker_outage_and_an_agent_kill_lose_no_telemetry_and_duplicate_none(
    tmp_path, signing, broker, collector, agents
):
    setup = write_agent(
        tmp_path / "a", [signing.public_path], broker_port=broker.port, telemetry_interval_s=0.1
    )
    agent = agents(setup)
    wait_for(lambda: len(received(collector, "telemetry")) >= 5, "telemetry before the outage")

    broker.stop()
    time.sleep(1.0)  # about ten messages wait on disk
    agent.kill()  # and the agent dies with them queued
    agent.start()
    time.sleep(1.0)
    assert outbox_state(setup.data_dir)[1], "messages are waiting on disk during the outage"
    broker.start()

    wait_for(lambda: agent.status()["mqtt"]["connected"], "the agent to reconnect", on_timeout=agent.log_tail)
    wait_for(lambda: len(received(collector, "telemetry")) >= 30, "telemetry after the outage")
    assert agent.terminate() == 0  # a clean stop gives queued messages a moment to go out
    last_seq, waiting, dropped = outbox_state(setup.data_dir)
    assert dropped == 0
    expected = set(range(1, last_seq + 1)) - set(waiting)
    wait_for(lambda: {t.seq for t in received(collector, "telemetry")} >= expected, "every message")

    messages = received(collector, "telemetry")
    unique: dict[str, int] = {}
    first_arrivals = []
    for message in messages:
        if message.msg_id not in unique:
            unique[message.msg_id] = message.seq
            first_arrivals.append(message.seq)
    assert sorted(unique.values()) == sorted(expected), "every message exactly once after de-duplication"
    assert len(set(unique.values())) == len(unique), "one msg_id per seq"
    assert first_arrivals == sorted(first_arrivals), "in order per device"
    assert not waiting, "nothing left behind after a clean stop"
    assert all(m.fleet == FLEET and m.device == DEVICE for m in messages)


def test_past_the_bound_the_oldest_are_dropped_and_the_drop_is_reported(
    tmp_path, signing, broker, collector, agents
):
    broker.stop()
    setup = write_agent(
        tmp_path / "a",
        [signing.public_path],
        broker_port=broker.port,
        telemetry_interval_s=0.05,
        telemetry={"queue_max_messages": 10},
    )
    agent = agents(setup)
    wait_for(lambda: outbox_state(setup.data_dir)[2] >= 5, "the queue to overflow")
    broker.start()
    wait_for(
        lambda: any(t.queue and t.queue.dropped_total > 0 for t in received(collector, "telemetry")),
        "a drop report",
    )
    agent.terminate()
    _, _, dropped = outbox_state(setup.data_dir)
    seqs = sorted({t.seq for t in received(collector, "telemetry")})
    assert seqs[0] > 1, "the oldest were dropped"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "and only the oldest: no gap after them"
    assert dropped == seqs[0] - 1, "the dropped count is exactly what never arrived"
    assert max(t.queue.dropped_total for t in received(collector, "telemetry")) <= dropped


def test_telemetry_carries_inference_system_and_drift_statistics(
    tmp_path, signing, registry, broker, collector, agents
):
    setup = write_agent(
        tmp_path / "a",
        [signing.public_path],
        registry=registry,
        broker_port=broker.port,
        telemetry_interval_s=0.5,
        telemetry={"drift_samples_per_s": None},  # every inference, so the counts below are exact
    )
    agent = agents(setup)
    v1 = classifier_bundle(tmp_path, signing.private, 1)
    desired = registry.desire(v1)
    agent.wait_update(desired.update_id)
    for _ in range(20):
        agent.infer_tensor(X)

    def with_inferences():
        reports = [t for t in received(collector, "telemetry") if t.inference.count]
        return reports if sum(t.inference.count for t in reports) >= 20 else None

    reports = wait_for(with_inferences, "the intervals with the 20 inferences")  # one or two intervals
    assert sum(t.inference.count for t in reports) == 20 and sum(t.inference.errors for t in reports) == 0
    for report in reports:
        assert report.model.name == "tiny" and report.model.version == 1 and report.model.slot == "a"
        assert 0 < report.inference.latency_ms_p50 <= report.inference.latency_ms_p95
        assert report.inference.throughput_per_s > 0 and report.queue is not None
        assert report.system.agent_rss_mb > 10 and report.system.memory_percent is not None
    drift = merge([t.drift for t in reports if t.drift is not None])
    assert drift.samples == 20 and len(drift.input_mean) == 3
    np.testing.assert_allclose(drift.input_mean, X.mean(axis=(0, 2, 3)), atol=1e-4)
    assert sum(drift.confidence_hist) == 20 and sum(drift.class_hist) == 20
    raw = [p for t, p, _ in collector.messages if t == TOPICS.telemetry]
    assert all(b"pixel" not in p and len(p) < 4096 for p in raw), (
        "statistics only: no raw input leaves the device"
    )


def test_a_retained_desired_message_drives_an_update_reported_over_mqtt(
    tmp_path, signing, registry, broker, collector, agents
):
    setup = write_agent(
        tmp_path / "a", [signing.public_path], registry=registry, broker_port=broker.port, poll_s=3600
    )
    agent = agents(setup)
    wait_for(lambda: agent.status()["mqtt"]["connected"], "the agent to connect")
    collector.publish(TOPICS.desired, b'{"kind": "desired", "garbage": true}', retain=True)
    v1 = classifier_bundle(tmp_path, signing.private, 1)
    desired = registry.desire(v1)
    registry.desired = None  # only MQTT tells the agent about it
    collector.publish(TOPICS.desired, dump_payload(desired), retain=True)
    assert agent.wait_update(desired.update_id)["state"] == "SUCCEEDED"
    assert serves(agent, 1)
    states = wait_for(
        lambda: (
            (s := [u.state for u in {u.msg_id: u for u in received(collector, "update")}.values()])[-1:]
            == ["SUCCEEDED"]
            and s
        ),
        "the statuses over MQTT",
    )
    assert states == ALL_STATES
    assert registry.updates == [], "MQTT was up: no HTTP fallback"
    # A registry that subscribes only now still learns how the update ended: the newest status is retained.
    late = MqttCollector(broker.port, topic=TOPICS.update, client_id="late", persistent=False).start()
    retained = wait_for(lambda: late.messages, "the retained update status")
    late.stop()
    assert len(retained) == 1 and retained[0][2] is True
    assert parse_payload("update", retained[0][1]).state == "SUCCEEDED"
    presence = wait_for(
        lambda: [p for p in received(collector, "presence") if p.model and p.model.version == 1], "presence"
    )
    assert presence[-1].state == "online", "the retained presence names the model now served"
    assert "dropped a desired-model message" in agent.log_tail(400)
