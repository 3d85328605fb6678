"""The registry's `GET /metrics`: the Prometheus text format read back with prometheus_client's own parser,
on SQLite and PostgreSQL, after a rollout halts; the token it needs; the per-device switch."""

from __future__ import annotations

import pytest

from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle


def scrape(api, headers=None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    response = api.client.get("/metrics", headers=headers or api.token("read-only", "prom"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def fleet(api, signing, tmp_path) -> SimFleet:
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    sim = SimFleet(api)
    sim.enroll(6, prefix="cam", group="lobby")
    sim.enroll(4, prefix="door", target="rpi5")
    for _ in range(3):
        sim.report_running(1, p95=10.0, confidence=[0] * 8 + [20, 80])
    return sim


def test_metrics_after_a_halted_rollout(api, backend, fleet):
    rollout = api.client.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": 2, "waves": [20, 100], "policy": {"bake_s": 0}},
        headers=api.admin(),
    ).json()
    first = fleet.apply_desired("SUCCEEDED")
    fleet.report_running(2, names=first, p95=13.0, confidence=[0] * 8 + [20, 80])  # p95 +30 %
    api.registry.reconciler.tick()
    api.client.delete("/api/v1/devices/door-003", headers=api.admin())  # revoked

    samples = scrape(api)
    rid = str(rollout["id"])
    assert value(samples, "edgectl_registry_devices", presence="online") == 9
    assert value(samples, "edgectl_registry_devices", presence="revoked") == 1
    assert value(samples, "edgectl_registry_devices_by_target", target="cpu") == 6
    assert value(samples, "edgectl_registry_devices_by_target", target="rpi5") == 4
    assert value(samples, "edgectl_registry_group_devices", group="lobby", presence="online") == 6
    assert value(samples, "edgectl_registry_group_devices", group="", presence="online") == 3
    versions = {
        dict(labels)["version"]: v for (name, labels), v in samples.items() if name.endswith("by_version")
    }
    assert versions == {"1": 7, "2": 2}  # the two updated still report v2 until they revert
    assert (
        value(
            samples, "edgectl_registry_rollout_info", rollout=rid, model="digits", version="2", state="halted"
        )
        == 1
    )
    assert value(samples, "edgectl_registry_rollout_halted", rollout=rid, reason="p95_regression") == 1
    assert value(samples, "edgectl_registry_rollout_wave", rollout=rid) == 0
    assert value(samples, "edgectl_registry_rollout_devices", rollout=rid, outcome="reverting") == 2
    assert value(samples, "edgectl_registry_rollouts", state="halted") == 1
    assert value(samples, "edgectl_registry_rollouts", state="running") == 0
    assert value(samples, "edgectl_registry_retraining_jobs", state="queued") == 0
    assert value(samples, "edgectl_registry_ingest_received_total") == 0  # no MQTT on this registry
    assert value(samples, "edgectl_registry_ingest_queue_depth") == 0
    assert not any(name.startswith("edgectl_registry_device_") for name, _ in samples)  # per-device off


def test_update_failures_and_health(api, fleet):
    api.client.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": 2, "waves": [100], "policy": {"bake_s": 0}},
        headers=api.admin(),
    )
    fleet.apply_desired("FAILED", names=["cam-000", "cam-001"])
    reader = api.token("read-only", "prom")
    samples = scrape(api, reader)
    assert value(samples, "edgectl_registry_update_failures") == 2
    assert value(samples, "edgectl_registry_devices_by_health", health="degraded") == 2
    assert value(samples, "edgectl_registry_devices_by_health", health="ok") == 8
    assert value(samples, "edgectl_registry_failed_updates_total") == 2

    # One device recovers while another fails: the gauge of devices whose last update failed stays at 2,
    # and only the counter shows a new failure (the alert rule reads the counter for that reason).
    fleet.apply_desired("SUCCEEDED", names=["cam-000"])
    fleet.apply_desired("FAILED", names=["cam-002"])
    fleet.apply_desired("FAILED", names=["cam-002"])  # the same update reported twice counts once
    samples = scrape(api, reader)
    assert value(samples, "edgectl_registry_update_failures") == 2
    assert value(samples, "edgectl_registry_failed_updates_total") == 3


def test_metrics_need_a_token(api):
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Bearer edr_wrong"}).status_code == 401
    assert api.client.get("/metrics", headers=api.token("read-only")).status_code == 200


def test_per_device_series_only_when_switched_on(tmp_path, signing):
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app
    from tests.cloud_registry.conftest import Api, make_settings

    app = create_app(make_settings(tmp_path / "registry", signing[1], metrics_per_device=True))
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        sim = SimFleet(api)
        sim.enroll(2, prefix="cam")
        assert api.push(make_bundle(tmp_path, signing[0], version=1)).status_code == 201
        sim.report_running(1, p95=12.5)
        samples = scrape(api)
    assert value(samples, "edgectl_registry_device_online", device="cam-000") == 1
    assert value(samples, "edgectl_registry_device_latency_p95_ms", device="cam-001") == 12.5


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("health gate crossed: p95_regression 0.3 > 0.25", "p95_regression"),
        ("health gate crossed: failure_rate 0.6 > 0.5; confidence_psi 1 > 0.2", "failure_rate"),
        ("wave 1 did not meet its success threshold in 30 s (0/2 succeeded)", "timeout"),
        ("wave 2: 1/4 succeeded", "failures"),
        ("halted by alice", "manual"),
        (None, "manual"),
    ],
)
def test_halt_reason_is_one_fixed_word(text, word):
    from cloud_registry.metrics import halt_reason

    assert halt_reason(text) == word
