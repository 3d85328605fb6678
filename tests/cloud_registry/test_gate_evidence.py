"""A gate judges only on enough evidence (issue 16, the design gap).

Today a p95 gate halted a rollout on one 2-second interval of 4 inferences. Now a device counts once it has
reported `min_device_inferences` over `min_baked_s` on each side, the gates judge once `min_devices` count
(every device with a baseline when fewer have one), and the rollout status says what the wave waits for.
"""

from __future__ import annotations

import time

import pytest

from cloud_registry import gates
from tests.cloud_registry import test_rollouts
from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle, telemetry


def _window(inferences: int, seconds: float, p95: float = 10.0) -> gates.Window:
    window = gates.Window()
    window.add(inferences, 0, p95, None, seconds)
    return window


def test_pool_counts_only_devices_with_enough_evidence_on_both_sides():
    enough, thin, none = _window(100, 60), _window(4, 2), gates.Window()
    rules = {"min_device_inferences": 20, "min_baked_s": 10, "min_devices": 3}
    before, after, evidence = gates.pool([(enough, enough), (enough, thin), (none, enough)], **rules)
    # Two devices have a baseline, one of them enough after the update; 3 wanted, but only 2 can be.
    assert (evidence.baseline_devices, evidence.judged_devices, evidence.needed_devices) == (2, 1, 2)
    assert not evidence.enough and (before.inferences, after.inferences) == (100, 100)
    _, _, evidence = gates.pool([(enough, enough), (enough, enough)], **rules)
    assert evidence.enough
    _, _, evidence = gates.pool([(none, enough)], **rules)
    assert not evidence.applicable  # no baseline anywhere: nothing to compare, nothing to wait for
    assert not _window(19, 60).enough(20, 10) and not _window(20, 9.9).enough(20, 10)
    assert _window(20, 10).enough(20, 10) and _window(1, 0).enough(0, 0) and not gates.Window().enough(0, 0)


fleet = (
    test_rollouts.fleet
)  # ten devices serving v1 with a baseline (3 x 100 inferences over 10 s); v2 pushed


def _create(api, waves: list[float], **policy) -> dict:  # type: ignore[no-untyped-def]
    return test_rollouts.create(api, waves=waves, policy={"bake_s": 0, **policy})


_status = test_rollouts.status


def _report(fleet: SimFleet, name: str, *, count: int, interval_s: float, p95: float) -> None:
    device = fleet.devices[name]
    message = telemetry(name, device.next_seq(), version=2, count=count, p95=p95)
    message.interval_s = interval_s
    fleet.feed(message)


def test_one_short_sample_does_not_judge_and_the_status_says_what_the_wave_waits_for(
    api, backend, fleet, capsys
):
    rollout = _create(api, [10, 100])
    (first,) = fleet.apply_desired("SUCCEEDED")
    _report(fleet, first, count=4, interval_s=2, p95=20.0)  # twice as slow, but one 2 s interval of 4
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["state"] == "running" and info["current_wave"] == 0
    assert info["gates"]["p95_regression"] is None
    assert (
        info["waiting"]
        == "wave 1: gates wait for evidence: 0 of 1 devices reported 20 inferences over 10 s on v2"
    )

    from edgectl.rollout import _show  # what `edgectl rollout status` prints
    from registry_api.schemas import RolloutInfo  # the typed client's answer

    capsys.readouterr()
    _show(RolloutInfo.model_validate(info))
    printed = " ".join(capsys.readouterr().out.split())
    assert "waiting: wave 1: gates wait for evidence: 0 of 1 devices reported 20 inferences" in printed

    for _ in range(4):  # 5 intervals: 20 inferences over 10 s, still twice as slow
        _report(fleet, first, count=4, interval_s=2, p95=20.0)
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["state"] == "halted" and "p95_regression 1 > 0.25" in info["reason"]
    assert info["waiting"] is None


def test_the_gates_wait_for_enough_devices_then_the_wave_goes_on(api, fleet):
    rollout = _create(api, [40, 100])
    updated = fleet.apply_desired("SUCCEEDED")
    assert len(updated) == 4
    fleet.report_running(2, names=updated[:2], p95=10.0)  # 100 inferences over 10 s each
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["current_wave"] == 0
    assert (
        info["waiting"]
        == "wave 1: gates wait for evidence: 2 of 3 devices reported 20 inferences over 10 s on v2"
    )
    assert (info["gates"]["judged_devices"], info["gates"]["needed_devices"]) == (2, 3)

    fleet.report_running(2, names=updated[2:3], p95=10.0)
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["current_wave"] == 1 and info["gates"]["p95_regression"] == pytest.approx(0.0)
    assert info["waiting"].startswith("wave 2: ")


def test_a_wave_without_evidence_times_out_and_says_so(api, fleet):
    rollout = _create(api, [10, 100], wave_timeout_s=30)
    (first,) = fleet.apply_desired("SUCCEEDED")
    _report(fleet, first, count=4, interval_s=2, p95=10.0)
    reconciler = api.registry.reconciler
    reconciler.tick()
    assert _status(api, rollout["id"])["state"] == "running"
    reconciler.clock = lambda: time.time() + 31
    reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["state"] == "halted"
    assert info["reason"] == (
        "wave 1 did not give its gates enough evidence in 30 s "
        "(0 of 1 devices reported 20 inferences over 10 s on v2)"
    )


def test_without_a_baseline_there_is_nothing_to_wait_for(api, signing, tmp_path):
    """Devices that served no inferences before (a first install, an idle fleet): no comparison to make."""
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    fleet = SimFleet(api)
    fleet.enroll(2)
    fleet.report_running(1, count=0, p95=None)
    rollout = _create(api, [50, 100])
    fleet.apply_desired("SUCCEEDED")
    api.registry.reconciler.tick()
    info = _status(api, rollout["id"])
    assert info["current_wave"] == 1 and info["gates"]["baseline_devices"] == 0


def test_policies_stored_before_the_evidence_fields_get_their_defaults():
    from registry_api.schemas import GatePolicy

    policy = GatePolicy.model_validate({"bake_s": 0, "min_inferences": 5})
    assert (policy.min_device_inferences, policy.min_baked_s, policy.min_devices) == (20, 10.0, 3)
