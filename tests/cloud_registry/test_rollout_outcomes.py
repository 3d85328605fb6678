"""A halted wave says how its updates ended (issue 16, defect 4): the failure that halted it stays a failure.

Today's registry turned the failed device into `reverting` / `reverted` when it halted the rollout and
counted `failed 0` in the wave, although the failure rate that halted it was 1.
"""

from __future__ import annotations

from tests.cloud_registry import test_rollouts
from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle


def _fleet(api, signing, tmp_path, devices: int) -> SimFleet:  # type: ignore[no-untyped-def]
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    fleet = SimFleet(api)
    fleet.enroll(devices)
    fleet.report_running(1, p95=10.0)
    return fleet


def _create(api, waves: list[float]) -> dict:  # type: ignore[no-untyped-def]
    return test_rollouts.create(api, waves=waves)


_status = test_rollouts.status


def test_a_wave_halted_by_a_failed_update_counts_that_failure(api, backend, signing, tmp_path):
    fleet = _fleet(api, signing, tmp_path, 10)
    rollout = _create(api, [10, 100])
    failed = fleet.apply_desired("FAILED")
    assert len(failed) == 1
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["state"] == "halted" and "failure_rate 1 > 0" in info["reason"]
    assert info["gates"]["failure_rate"] == 1
    assert (info["waves"][0]["failed"], info["waves"][0]["succeeded"]) == (1, 0)
    assert info["devices"] == {"failed": 1, "pending": 9}
    # It is still ordered back to the version it runs, and going back does not turn the failure into a success.
    desired = fleet.desired(failed[0])
    assert desired["version"] == 1 and desired["rollback"] is not None
    fleet.devices[failed[0]].version = 2  # what the device would say it leaves: the order's own update
    fleet.apply_desired("SUCCEEDED", names=failed)
    info = _status(api, rollout["id"])
    assert info["waves"][0]["failed"] == 1 and info["devices"] == {"failed": 1, "pending": 9}


def test_a_wave_halted_by_its_telemetry_keeps_its_successes_and_failures(api, signing, tmp_path):
    fleet = _fleet(api, signing, tmp_path, 10)
    body = {
        "model": "digits",
        "version": 2,
        "waves": [30, 100],
        "policy": {"bake_s": 0, "max_failure_rate": 0.5, "success_threshold": 0.5},
    }
    rollout = api.client.post("/api/v1/rollouts", json=body, headers=api.admin()).json()
    first = [n for n in fleet.devices if (fleet.desired(n) or {}).get("version") == 2]
    assert len(first) == 3
    fleet.apply_desired("ROLLED_BACK", names=first[:1])
    fleet.apply_desired("SUCCEEDED", names=first[1:])
    fleet.report_running(2, names=first[1:], p95=20.0)  # twice as slow: the p95 gate halts the wave
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["state"] == "halted" and "p95_regression" in info["reason"]
    assert (info["waves"][0]["succeeded"], info["waves"][0]["failed"]) == (2, 1)
    assert info["devices"] == {"rolled_back": 1, "reverting": 2, "pending": 7}
    fleet.apply_desired("SUCCEEDED", names=first[1:])  # the two go back to v1
    info = _status(api, rollout["id"])
    assert info["devices"] == {"rolled_back": 1, "reverted": 2, "pending": 7}
    assert (info["waves"][0]["succeeded"], info["waves"][0]["failed"]) == (2, 1)
