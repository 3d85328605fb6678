"""Telemetry retention: raw rows past `telemetry_retention_s` become hourly aggregates; readers use both."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.retention import HOUR, Retention, cutoff_for, roll_up
from tests.cloud_registry import test_rollouts

RETENTION_H = 6
PER_HOUR = 6  # one report per device every 10 minutes
START = 1_800_000_000 - 1_800_000_000 % HOUR  # an hour boundary


def report(device_id: int, n: int, at: float) -> m.TelemetryRecord:
    """The n-th report of a device: version 1 for the first day, 2 after; figures that vary with n."""
    version = 1 if n < 24 * PER_HOUR else 2
    return m.TelemetryRecord(
        device_id=device_id,
        msg_id=f"d{device_id}-{n}",
        seq=n + 1,
        sent_at=at,
        received_at=at,
        interval_s=600.0,
        model_name="digits",
        model_version=version,
        count=100 + n % 7,
        errors=n % 3,
        latency_ms_p50=5.0 + n % 4,
        latency_ms_p95=10.0 + n % 5,
        throughput_per_s=1.0,
        system={"cpu_percent": 20.0 + n % 10, "memory_percent": 50.0},
        drift={"samples": 10, "confidence_hist": [n % 2, 1, 2]},
    )


def test_raw_telemetry_stays_bounded_and_the_aggregates_add_up(api, backend):
    factory = api.registry.factory
    devices = [api.enroll(f"dev-{i}", "cpu") for i in range(3)]
    with factory() as session:
        ids = [device_records.get_device(session, name=f"dev-{i}").id for i in range(len(devices))]
    clock = [float(START)]
    retention = Retention(factory, retention_s=RETENTION_H * HOUR, interval_s=HOUR, clock=lambda: clock[0])
    sent: dict[tuple[int, int], list[m.TelemetryRecord]] = {}
    largest = 0
    for hour in range(48):  # two days of steady load, a retention pass every simulated hour
        with factory() as session, session.begin():
            for k in range(PER_HOUR):
                n = hour * PER_HOUR + k
                for device_id in ids:
                    row = report(device_id, n, START + hour * HOUR + k * 600 + 7)
                    sent.setdefault((device_id, row.model_version), []).append(row)
                    session.add(row)
        clock[0] = START + (hour + 1) * HOUR + 60
        retention.tick()
        with factory() as session:
            raw = session.scalar(select(func.count()).select_from(m.TelemetryRecord))
            oldest = session.scalar(select(func.min(m.TelemetryRecord.received_at)))
        largest = max(largest, raw)
        assert oldest >= cutoff_for(clock[0], RETENTION_H * HOUR)
    # Bounded: at most the retention plus the hour being filled, whatever the load's duration.
    assert largest <= len(ids) * PER_HOUR * (RETENTION_H + 1)
    assert raw == len(ids) * PER_HOUR * RETENTION_H  # exactly the retained hours at the end

    # Split chunks merge into the same hourly rows: roll up the rest in chunks of 7 rows.
    cutoff = START + 48 * HOUR + HOUR
    assert roll_up(factory, cutoff=START + 46 * HOUR + 1800, chunk=7, max_chunks=1000) > 0
    assert roll_up(factory, cutoff=cutoff, chunk=7, max_chunks=1000) > 0
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(m.TelemetryRecord)) == 0
        hourly = list(session.scalars(select(m.TelemetryHourly)))
    assert len(hourly) == len(ids) * 48  # per device and hour (each hour has one version here)
    for (device_id, version), rows in sent.items():
        mine = [h for h in hourly if h.device_id == device_id and h.model_version == version]
        assert {h.model_name for h in mine} == {"digits"}
        assert sum(h.reports for h in mine) == len(rows)
        assert sum(h.inferences for h in mine) == sum(r.count for r in rows)
        assert sum(h.errors for h in mine) == sum(r.errors for r in rows)
        assert sum(h.seconds for h in mine) == pytest.approx(600.0 * len(rows))
        assert sum(h.p95_weighted for h in mine) == pytest.approx(
            sum(r.count * r.latency_ms_p95 for r in rows)
        )
        for h in mine:
            in_hour = [r for r in rows if h.hour <= r.received_at < h.hour + HOUR]
            assert h.reports == PER_HOUR == len(in_hour)
            assert h.p95_weighted / h.p95_count == pytest.approx(
                sum(r.count * r.latency_ms_p95 for r in in_hour) / sum(r.count for r in in_hour)
            )
            assert h.confidence_hist == [
                sum(r.drift["confidence_hist"][i] for r in in_hour) for i in range(3)
            ]
            assert h.cpu_percent_sum / h.system_reports == pytest.approx(
                sum(r.system["cpu_percent"] for r in in_hour) / PER_HOUR
            )

    # The dashboard's points: the hourly aggregates when no raw rows are left.
    with factory() as session:
        points = device_records.device_points(
            session, device=device_records.get_device(session, name="dev-0"), limit=500
        )
    assert len(points) == 48 and [p.received_at for p in points] == sorted(p.received_at for p in points)
    assert all(p.reports == PER_HOUR for p in points) and points[0].model_version == 1
    assert points[-1].model_version == 2
    from cloud_registry.api.routes.ui import UI_COOKIE
    from tests.cloud_registry.conftest import ADMIN_TOKEN

    api.client.cookies.set(UI_COOKIE, ADMIN_TOKEN)
    page = api.client.get("/ui/devices/dev-0", follow_redirects=False)
    assert page.status_code == 200 and "<svg" in page.text


def test_a_backlog_is_rolled_up_a_bounded_amount_per_tick(api):
    factory = api.registry.factory
    api.enroll("dev-0", "cpu")
    with factory() as session, session.begin():
        device_id = device_records.get_device(session, name="dev-0").id
        session.add_all(report(device_id, n, START + n * 600.0) for n in range(30))
    clock = [START + 100 * HOUR]
    retention = Retention(
        factory, retention_s=HOUR, interval_s=HOUR, clock=lambda: clock[0], chunk=4, max_chunks=2
    )
    assert [retention.tick() for _ in range(5)] == [8, 8, 8, 6, 0]  # the backlog goes on; then the interval
    clock[0] += HOUR
    assert retention.tick() == 0


fleet = test_rollouts.fleet  # ten cpu devices serving digits v1 with a healthy baseline; v2 pushed


def test_the_gates_judge_on_rolled_up_telemetry(api, backend, fleet):
    """A rollout older than the retention: its devices' raw telemetry was rolled up; the gates still see it."""
    body = {"model": "digits", "version": 2, "waves": [20, 100], "policy": {"bake_s": 0}}
    rollout = api.client.post("/api/v1/rollouts", json=body, headers=api.admin()).json()
    first = fleet.apply_desired("SUCCEEDED")
    fleet.report_running(2, names=first, p95=13.0, confidence=[0] * 8 + [20, 80])  # +30 % > 25 %
    assert roll_up(api.registry.factory, cutoff=cutoff_for(time.time() + 2 * HOUR, 0)) > 0
    with api.registry.factory() as session:
        assert session.scalar(select(func.count()).select_from(m.TelemetryRecord)) == 0
    api.registry.reconciler.tick()
    info = api.client.get(f"/api/v1/rollouts/{rollout['id']}", headers=api.admin()).json()
    assert info["state"] == "halted" and "p95_regression 0.3 > 0.25" in info["reason"]


def test_the_retention_setting_is_checked(tmp_path, capsys, monkeypatch):
    from cloud_registry.core.config import Settings
    from tests.cli import run

    assert Settings(data_dir=tmp_path).telemetry_retention_s == 7 * 86400
    with pytest.raises(ValidationError, match="telemetry_retention_s"):
        Settings(data_dir=tmp_path, telemetry_retention_s=60)
    with pytest.raises(ValidationError, match=r"drift_window_s .* is longer than telemetry_retention_s"):
        Settings(data_dir=tmp_path, telemetry_retention_s=3600, drift_window_s=7200)
    monkeypatch.delenv("EDGECTL_REGISTRY_CONFIG", raising=False)
    monkeypatch.setenv("EDGECTL_REGISTRY_TELEMETRY_RETENTION_S", "60")
    result = run(capsys, "registry", "serve")
    assert result.code == 2 and len(result.error_lines) == 2, result.err
    assert result.error_lines[0].startswith("error: registry settings are invalid")
    assert "telemetry_retention_s" in result.err and result.error_lines[1].startswith("hint:")
