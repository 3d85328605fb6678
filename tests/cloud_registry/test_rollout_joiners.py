"""Devices that join a rollout's selection while it runs join its next wave (hawkBit's dynamic groups)."""

from __future__ import annotations

from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle


def create(api, **body) -> dict:
    payload = {
        "model": "digits",
        "version": 2,
        "selection": {"group": "lab"},
        "policy": {"bake_s": 0},
        **body,
    }
    response = api.client.post("/api/v1/rollouts", json=payload, headers=api.admin())
    assert response.status_code == 201, response.text
    return response.json()


def status(api, rollout_id: int) -> dict:
    return api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=api.admin()).json()


def desired_version(fleet: SimFleet, name: str) -> int | None:
    return (fleet.desired(name) or {}).get("version")


def test_devices_enrolled_into_the_group_join_the_next_wave(api, backend, signing, tmp_path):
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    fleet = SimFleet(api)
    fleet.enroll(4, prefix="lab", group="lab")
    fleet.enroll(1, prefix="shop", group="shop")
    fleet.report_running(1)
    rollout = create(api, waves=[25, 100])
    rid = rollout["id"]
    assert rollout["total"] == 4 and [w["size"] for w in rollout["waves"]] == [1, 3]

    # While wave 1 runs: two devices enrolled into the group, one moved into it, one elsewhere.
    fleet.enroll(2, prefix="new", group="lab")
    fleet.enroll(1, prefix="away", group="shop")
    moved = api.client.patch("/api/v1/devices/shop-000", json={"group": "lab"}, headers=api.admin())
    assert moved.status_code == 200, moved.text
    fleet.report_running(1, names=["new-000", "new-001", "shop-000", "away-000"])
    api.registry.reconciler.tick()
    info = status(api, rid)
    assert info["total"] == 7 and [w["size"] for w in info["waves"]] == [1, 6]
    joined = [d for d in info["decisions"] if d["action"] == "devices_joined"]
    assert len(joined) == 1 and joined[0]["details"]["devices"] == ["new-000", "new-001", "shop-000"]
    assert "wave 2" in joined[0]["reason"]
    assert all(desired_version(fleet, n) is None for n in ("new-000", "new-001", "shop-000", "away-000"))

    api.registry.reconciler.tick()  # a joiner is added once
    assert status(api, rid)["total"] == 7

    # Wave 1 succeeds: wave 2 starts, with the joiners.
    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    api.registry.reconciler.tick()
    info = status(api, rid)
    assert info["current_wave"] == 1
    assert all(desired_version(fleet, n) == 2 for n in ("new-000", "new-001", "shop-000"))
    assert desired_version(fleet, "away-000") is None

    # One more joins while the last wave runs: it gets a wave of its own after it, not the running one.
    fleet.enroll(1, prefix="late", group="lab")
    api.registry.reconciler.tick()
    info = status(api, rid)
    assert [w["size"] for w in info["waves"]] == [1, 6, 1] and info["waves"][2]["state"] == "pending"
    assert desired_version(fleet, "late-000") is None

    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    api.registry.reconciler.tick()
    info = status(api, rid)
    assert info["state"] == "running" and info["current_wave"] == 2
    assert desired_version(fleet, "late-000") == 2

    fleet.report_running(2, names=fleet.apply_desired("SUCCEEDED"))
    api.registry.reconciler.tick()
    info = status(api, rid)
    assert info["state"] == "completed" and info["devices"] == {"succeeded": 8}
    assert desired_version(fleet, "away-000") is None


def test_a_joiner_already_on_the_version_or_busy_elsewhere_stays_out(api, signing, tmp_path):
    for version in (1, 2):
        assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
    api.push(make_bundle(tmp_path, signing[0], version=2, target="rpi5"))
    fleet = SimFleet(api)
    fleet.enroll(2, prefix="lab", group="lab")
    fleet.enroll(1, prefix="pi", target="rpi5", group="pi")
    fleet.report_running(1)
    lab = create(api, waves=[50, 100])
    pis = create(api, selection={"group": "pi"}, waves=[100])

    fleet.enroll(1, prefix="done", group="lab")
    fleet.report_running(2, names=["done-000"])  # already serves v2
    fleet.enroll(1, prefix="esp", target="esp32-s3", group="lab")  # no artifact for its target
    api.client.patch("/api/v1/devices/pi-000", json={"group": "lab"}, headers=api.admin())  # busy in `pis`
    api.registry.reconciler.tick()
    info = status(api, lab["id"])
    assert info["total"] == 2
    assert not [d for d in info["decisions"] if d["action"] == "devices_joined"]
    assert status(api, pis["id"])["total"] == 1
