"""The rollout engine: waves, gates from telemetry before vs after, automatic rollback, operator actions."""

from __future__ import annotations

import time

import pytest

from edgewire.commands import verify_rollback
from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle


@pytest.fixture
def fleet(api, signing, tmp_path) -> SimFleet:
    """Ten cpu devices serving digits v1 with a healthy baseline; v2 is pushed."""
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    sim = SimFleet(api)
    sim.enroll(10)
    for _ in range(3):
        sim.report_running(1, p95=10.0, confidence=[0] * 8 + [20, 80])
    return sim


def create(api, **body) -> dict:
    payload = {"model": "digits", "version": 2, "waves": [10, 50, 100], "policy": {"bake_s": 0}, **body}
    response = api.client.post("/api/v1/rollouts", json=payload, headers=api.admin())
    assert response.status_code == 201, response.text
    return response.json()


def status(api, rollout_id: int) -> dict:
    return api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=api.admin()).json()


def on_version(fleet: SimFleet, version: int) -> list[str]:
    return [n for n in fleet.devices if (fleet.desired(n) or {}).get("version") == version]


def test_waves_advance_only_when_the_previous_wave_succeeded(api, backend, fleet):
    rollout = create(api)
    assert [w["size"] for w in rollout["waves"]] == [1, 4, 5]
    assert rollout["current_wave"] == 0 and len(on_version(fleet, 2)) == 1

    api.registry.reconciler.tick()  # nothing reported yet: the wave waits
    assert status(api, rollout["id"])["current_wave"] == 0

    for wave in (1, 2, 3):
        updated = fleet.apply_desired("SUCCEEDED")
        fleet.report_running(2, names=updated, p95=10.0, confidence=[0] * 8 + [20, 80])
        api.registry.reconciler.tick()
        info = status(api, rollout["id"])
        expected = {1: 5, 2: 10, 3: 10}[wave]
        assert len(on_version(fleet, 2)) == expected
    assert info["state"] == "completed" and info["devices"] == {"succeeded": 10}
    actions = [d["action"] for d in info["decisions"]]
    assert actions == [
        "created",
        "wave_started",
        "wave_threshold_met",
        "wave_completed",
        "wave_started",
        "wave_threshold_met",
        "wave_completed",
        "wave_started",
        "wave_threshold_met",
        "completed",
    ]
    assert all(d["reason"] for d in info["decisions"])


def test_latency_regression_halts_the_first_wave_and_rolls_back(api, fleet):
    rollout = create(api, waves=[20, 100])
    first = fleet.apply_desired("SUCCEEDED")
    assert len(first) == 2
    fleet.report_running(2, names=first, p95=13.0, confidence=[0] * 8 + [20, 80])  # +30 % > 25 %
    api.registry.reconciler.tick()

    info = status(api, rollout["id"])
    assert info["state"] == "halted" and "p95_regression 0.3 > 0.25" in info["reason"]
    assert info["touched"] == 2 and info["devices"] == {"reverting": 2, "pending": 8}
    public_key = api.registry.command_key.public_key()
    for name in fleet.devices:
        desired = fleet.desired(name)
        if name in first:  # ordered back to v1 with a signed rollback order
            assert desired["version"] == 1 and desired["rollback"] is not None
            from edgewire.commands import RollbackOrder

            verify_rollback(
                RollbackOrder.model_validate(desired["rollback"]),
                [public_key],
                device=name,
                model="digits",
                version=1,
            )
        else:  # never touched
            assert desired is None
    fleet.apply_desired("SUCCEEDED", names=first)
    assert status(api, rollout["id"])["devices"] == {"reverted": 2, "pending": 8}


def test_regression_exactly_at_the_threshold_does_not_halt(api, fleet):
    rollout = create(api, waves=[20, 100])
    first = fleet.apply_desired("SUCCEEDED")
    fleet.report_running(2, names=first, p95=12.5, confidence=[0] * 8 + [20, 80])  # exactly +25 %
    api.registry.reconciler.tick()
    info = status(api, rollout["id"])
    assert info["state"] == "running" and info["current_wave"] == 1
    assert info["gates"]["p95_regression"] == pytest.approx(0.25)


def test_error_rate_and_confidence_shift_gates(api, fleet):
    rollout = create(api, waves=[20, 100], policy={"bake_s": 0, "max_error_rate_increase": 0.01})
    first = fleet.apply_desired("SUCCEEDED")
    fleet.report_running(2, names=first, errors=1, p95=10.0, confidence=[0] * 8 + [20, 80])  # 1 % = threshold
    api.registry.reconciler.tick()
    assert status(api, rollout["id"])["current_wave"] == 1  # 0.01 is not above 0.01

    fleet2_names = fleet.apply_desired("SUCCEEDED")
    fleet.report_running(2, names=fleet2_names, p95=10.0, confidence=[30, 30, 20, 10, 10, 0, 0, 0, 0, 0])
    api.registry.reconciler.tick()
    info = status(api, rollout["id"])
    assert info["state"] == "halted" and "confidence_psi" in info["reason"]
    assert info["gates"]["confidence_psi"] > 0.25


def test_failed_update_halts_and_the_success_threshold_boundary(api, fleet):
    # Two devices in wave 1; one fails: failure rate 0.5 is not above 0.5, success share 0.5 meets 0.5.
    policy = {"bake_s": 0, "max_failure_rate": 0.5, "success_threshold": 0.5}
    rollout = create(api, waves=[20, 100], policy=policy)
    first = [n for n in fleet.devices if (fleet.desired(n) or {}).get("version") == 2]
    fleet.apply_desired("SUCCEEDED", names=first[:1])
    fleet.report_running(2, names=first[:1])  # the evidence its gates wait for
    fleet.apply_desired("ROLLED_BACK", names=first[1:])
    api.registry.reconciler.tick()
    info = status(api, rollout["id"])
    assert info["state"] == "running" and info["current_wave"] == 1
    assert info["gates"]["failure_rate"] == pytest.approx(0.5)

    # Wave 2: 8 more devices; two more failures make 3 of 10 = 0.3, still not above 0.5...
    second = [n for n in fleet.devices if (fleet.desired(n) or {}).get("version") == 2 and n not in first]
    fleet.apply_desired("FAILED", names=second[:5])  # ...but 6 of 10 is.
    api.registry.reconciler.tick()
    info = status(api, rollout["id"])
    assert info["state"] == "halted" and "failure_rate 0.6 > 0.5" in info["reason"]


def test_a_wave_that_never_succeeds_times_out(api, fleet):
    rollout = create(api, waves=[10, 100], policy={"bake_s": 0, "wave_timeout_s": 30})
    reconciler = api.registry.reconciler
    reconciler.clock = lambda: time.time() + 31
    reconciler.tick()
    info = status(api, rollout["id"])
    assert info["state"] == "halted" and "did not meet its success threshold in 30 s" in info["reason"]


def test_bake_time_holds_the_next_wave(api, fleet):
    rollout = create(api, waves=[10, 100], policy={"bake_s": 120})
    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    reconciler = api.registry.reconciler
    reconciler.tick()
    assert status(api, rollout["id"])["current_wave"] == 0
    reconciler.clock = lambda: time.time() + 119
    reconciler.tick()
    assert status(api, rollout["id"])["current_wave"] == 0
    reconciler.clock = lambda: time.time() + 121
    reconciler.tick()
    assert status(api, rollout["id"])["current_wave"] == 1


def test_pause_resume_abort_and_manual_rollback(api, fleet):
    rollout = create(api, waves=[10, 100])
    rid = rollout["id"]

    def post(action, **body):
        return api.client.post(f"/api/v1/rollouts/{rid}/{action}", json=body or None, headers=api.admin())

    assert post("pause", reason="weekend").json()["state"] == "paused"
    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    api.registry.reconciler.tick()
    assert status(api, rid)["current_wave"] == 0  # paused: no new wave
    assert post("pause").status_code == 409
    assert post("resume").json()["state"] == "running"
    api.registry.reconciler.tick()
    assert status(api, rid)["current_wave"] == 1
    rolled = post("rollback", reason="customer report").json()
    assert rolled["state"] == "rolled_back" and rolled["reason"] == "customer report"
    assert all((fleet.desired(n) or {}).get("version") in (1, None) for n in fleet.devices)
    assert post("rollback").status_code == 409
    assert post("abort").status_code == 409
    actions = [(d["action"], d["actor"]) for d in status(api, rid)["decisions"]]
    assert ("paused", "bootstrap-admin") in actions and ("rolled_back", "bootstrap-admin") in actions


def test_abort_keeps_what_was_updated(api, fleet):
    rollout = create(api, waves=[10, 100])
    updated = fleet.apply_desired("SUCCEEDED")
    aborted = api.client.post(f"/api/v1/rollouts/{rollout['id']}/abort", headers=api.admin()).json()
    assert aborted["state"] == "aborted"
    api.registry.reconciler.tick()
    assert on_version(fleet, 2) == updated


def test_selection_and_conflicts(api, fleet, signing, tmp_path):
    fleet.enroll(2, prefix="pi", target="rpi5", group="lab", tags=["cam"])
    # v2 has no rpi5 artifact yet: nothing in the selection can take it.
    refused = api.client.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": 2, "selection": {"tag": "cam"}},
        headers=api.admin(),
    )
    assert refused.status_code == 409 and "no device to update" in refused.json()["detail"]
    api.push(make_bundle(tmp_path, signing[0], version=2, target="rpi5"))
    rollout = create(api, selection={"group": "lab"}, waves=[100])
    assert rollout["total"] == 2
    again = api.client.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": 2, "selection": {"group": "lab"}},
        headers=api.admin(),
    )
    assert again.status_code == 409 and "active rollout" in again.json()["detail"]
    api.client.put("/api/v1/models/digits/aliases/production", json={"version": 2}, headers=api.admin())
    fleet.enroll(1, prefix="old", target="esp32-s3")
    api.client.post(f"/api/v1/rollouts/{rollout['id']}/abort", headers=api.admin())
    by_alias = create(api, alias="production", version=None, selection={})
    assert by_alias["version"] == 2 and by_alias["total"] == 12
    excluded = by_alias["decisions"][0]["details"]["excluded"]
    assert excluded == {"no artifact for target": ["old-000"]}


def test_registry_restart_mid_rollout_resumes(tmp_path, signing):
    """A registry stopped between waves comes back, reads the rollout from the database and goes on."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app
    from tests.cloud_registry.conftest import Api, make_settings

    data = tmp_path / "registry"

    def start():
        app = create_app(make_settings(data, signing[1], reconcile_interval_s=0.1))
        client = TestClient(app)
        client.__enter__()
        return Api(client, app.state.registry, data)

    api = start()
    for version in (1, 2):
        api.push(make_bundle(tmp_path, signing[0], version=version))
    fleet = SimFleet(api)
    fleet.enroll(4)
    fleet.report_running(1)
    rollout = create(api, waves=[25, 50, 100])
    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    deadline = time.time() + 10
    while status(api, rollout["id"])["current_wave"] < 1 and time.time() < deadline:
        time.sleep(0.05)
    api.client.__exit__(None, None, None)  # the registry stops: wave 2 has started, nobody reported yet

    api = start()
    fleet.api = api
    try:
        assert status(api, rollout["id"])["current_wave"] == 1
        for _ in range(2):
            updated = fleet.apply_desired("SUCCEEDED")
            assert updated
            fleet.report_running(2, names=updated)
            deadline = time.time() + 10
            while status(api, rollout["id"])["state"] != "completed" and time.time() < deadline:
                if len(on_version(fleet, 2)) > sum(d.version == 2 for d in fleet.devices.values()):
                    break
                time.sleep(0.05)
        info = status(api, rollout["id"])
        assert info["state"] == "completed" and info["devices"] == {"succeeded": 4}
        started = [d for d in info["decisions"] if d["action"] == "wave_started"]
        assert [d["wave"] for d in started] == [0, 1, 2]  # no wave started twice across the restart
    finally:
        api.client.__exit__(None, None, None)
