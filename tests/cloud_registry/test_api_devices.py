"""Enrollment and the device-facing API (edgewire.device_api), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from cloud_registry import models as m
from tests.cloud_registry.helpers import make_bundle, telemetry, update_status


def _device(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def test_enrollment_is_one_time_and_stores_only_hashes(api, backend):
    token = api.client.post(
        "/api/v1/enrollment-tokens", json={"group": "lab", "tags": ["floor-1"]}, headers=api.admin()
    ).json()["token"]
    body = {"token": token, "name": "cam-1", "target": "rpi5", "tags": ["usb"], "hardware": {"model": "Pi 5"}}
    first = api.client.post("/v1/enroll", json=body)
    assert first.status_code == 200, first.text
    enrolled = first.json()
    assert enrolled["device"] == "cam-1" and enrolled["fleet"] == "default"
    assert enrolled["command_public_keys"][0].startswith("-----BEGIN PUBLIC KEY-----")
    again = api.client.post("/v1/enroll", json={**body, "name": "cam-2"})
    assert again.status_code == 403

    device = api.client.get("/api/v1/devices/cam-1", headers=api.admin()).json()
    assert (device["target"], device["group"], device["tags"]) == ("rpi5", "lab", ["floor-1", "usb"])
    assert device["hardware"] == {"model": "Pi 5"}
    with api.registry.factory() as session:
        row = session.scalar(select(m.Device).where(m.Device.name == "cam-1"))
        tokens = list(session.scalars(select(m.EnrollmentToken.token_hash)))
    assert enrolled["device_token"] not in (row.token_hash, row.mqtt_password_hash)
    assert row.mqtt_password_hash.startswith("$7$101$") and token not in tokens


def test_enrollment_refuses_bad_input(api):
    token = api.client.post("/api/v1/enrollment-tokens", json={}, headers=api.admin()).json()["token"]
    assert api.client.post("/v1/enroll", json={"token": "x" * 20, "target": "cpu"}).status_code == 403
    assert api.client.post("/v1/enroll", json={"token": token, "target": "no-such-board"}).status_code == 422
    assert (
        api.client.post("/v1/enroll", json={"token": token, "name": "../x", "target": "cpu"}).status_code
        == 422
    )
    api.enroll("taken")
    assert (
        api.client.post("/v1/enroll", json={"token": token, "name": "taken", "target": "cpu"}).status_code
        == 409
    )
    # A refused attempt does not spend the token.
    assert (
        api.client.post("/v1/enroll", json={"token": token, "name": "fresh", "target": "cpu"}).status_code
        == 200
    )


def test_mqtt_settings_given_at_enrollment(tmp_path, signing):
    from fastapi.testclient import TestClient

    from cloud_registry.core.security import mosquitto_verify
    from cloud_registry.main import create_app
    from tests.cloud_registry.conftest import ADMIN_TOKEN, make_settings

    settings = make_settings(
        tmp_path / "r",
        signing[1],
        device_mqtt_host="broker.example",
        device_mqtt_port=8883,
        mosquitto_dir=tmp_path / "mq",
    )
    with TestClient(create_app(settings)) as client:
        token = client.post(
            "/api/v1/enrollment-tokens", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).json()["token"]
        enrolled = client.post("/v1/enroll", json={"token": token, "name": "dev-1", "target": "cpu"}).json()
    mqtt = enrolled["mqtt"]
    assert (mqtt["host"], mqtt["port"], mqtt["username"]) == ("broker.example", 8883, "dev-1")
    line = (tmp_path / "mq" / "mosquitto.passwd").read_text().strip()
    user, digest = line.split(":", 1)
    assert user == "dev-1" and mosquitto_verify(mqtt["password"], digest)
    assert mqtt["password"] not in line
    assert "pattern write edgectl/data/default/%u/#" in (tmp_path / "mq" / "mosquitto.acl").read_text()


def _rollout_to(api, devices: list[str], version: int = 1) -> dict:
    response = api.client.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": version, "selection": {"devices": devices}, "waves": [100]},
        headers=api.admin(),
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_desired_state_and_downloads_are_per_device(api, backend, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0], payload=bytes(range(256)) * 64)
    sha = api.push(archive).json()["archive_sha256"]
    one, two = api.enroll("dev-1"), api.enroll("dev-2")
    _rollout_to(api, ["dev-1"])

    desired = api.client.get("/v1/device/desired", headers=_device(one["device_token"])).json()["desired"]
    assert desired["version"] == 1 and desired["archive_sha256"] == sha
    assert desired["url"] == f"/v1/device/bundles/{sha}"
    assert api.client.get("/v1/device/desired", headers=_device(two["device_token"])).json() == {
        "desired": None
    }
    assert api.client.get("/v1/device/desired").status_code == 401
    assert api.client.get("/v1/device/desired", headers=api.admin()).status_code == 401

    url, data = f"/v1/device/bundles/{sha}", archive.read_bytes()
    full = api.client.get(url, headers=_device(one["device_token"]))
    assert full.status_code == 200 and full.content == data and full.headers["etag"] == f'"{sha}"'
    # dev-2 was never told to fetch it: the same 404 as for an archive that does not exist.
    assert api.client.get(url, headers=_device(two["device_token"])).status_code == 404
    assert (
        api.client.get(f"/v1/device/bundles/{'0' * 64}", headers=_device(one["device_token"])).status_code
        == 404
    )


def test_ranged_downloads(api, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0], payload=bytes(range(256)) * 64)
    sha = api.push(archive).json()["archive_sha256"]
    device = api.enroll("dev-1")
    _rollout_to(api, ["dev-1"])
    url, data, size = f"/v1/device/bundles/{sha}", archive.read_bytes(), archive.stat().st_size
    auth = _device(device["device_token"])

    part = api.client.get(url, headers={**auth, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = api.client.get(url, headers={**auth, "Range": "bytes=1000-"})
    assert tail.status_code == 206 and tail.content == data[1000:]
    suffix = api.client.get(url, headers={**auth, "Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == data[-10:]
    same = api.client.get(url, headers={**auth, "Range": "bytes=5-9", "If-Range": f'"{sha}"'})
    assert same.status_code == 206 and same.content == data[5:10]
    changed = api.client.get(url, headers={**auth, "Range": "bytes=5-9", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == data
    beyond = api.client.get(url, headers={**auth, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


def test_http_fallbacks_write_only_the_callers_own_records(api, backend, signing, tmp_path):
    api.push(make_bundle(tmp_path, signing[0]))
    one, _two = api.enroll("dev-1"), api.enroll("dev-2")
    auth = _device(one["device_token"])
    rollout = _rollout_to(api, ["dev-1"])
    sample = telemetry("dev-1", 1, errors=3, version=None)
    assert (
        api.client.post("/v1/device/telemetry", content=sample.model_dump_json(), headers=auth).status_code
        == 204
    )
    # The same message again (a resend) is dropped, not stored twice.
    assert (
        api.client.post("/v1/device/telemetry", content=sample.model_dump_json(), headers=auth).status_code
        == 204
    )
    points = api.client.get("/api/v1/devices/dev-1/telemetry", headers=api.admin()).json()
    assert len(points) == 1 and points[0]["errors"] == 3

    foreign = telemetry("dev-2", 1)
    assert (
        api.client.post("/v1/device/telemetry", content=foreign.model_dump_json(), headers=auth).status_code
        == 403
    )
    assert api.client.get("/api/v1/devices/dev-2/telemetry", headers=api.admin()).json() == []

    update_id = api.client.get("/v1/device/desired", headers=auth).json()["desired"]["update_id"]
    status = update_status(
        "dev-1", 2, update_id=update_id, state="SUCCEEDED", to_version=1, rollout_id=rollout["id"]
    )
    assert (
        api.client.post("/v1/device/update", content=status.model_dump_json(), headers=auth).status_code
        == 204
    )
    device = api.client.get("/api/v1/devices/dev-1", headers=api.admin()).json()
    assert device["model"] == {"name": "digits", "version": 1, "slot": "b"}
    assert device["last_update_state"] == "SUCCEEDED"
    info = api.client.get(f"/api/v1/rollouts/{rollout['id']}", headers=api.admin()).json()
    assert info["devices"] == {"succeeded": 1}


def test_revoked_device_loses_access(api):
    device = api.enroll("dev-1")
    assert api.client.delete("/api/v1/devices/dev-1", headers=api.admin()).status_code == 200
    assert api.client.get("/v1/device/desired", headers=_device(device["device_token"])).status_code == 401
    assert api.client.get("/api/v1/devices", headers=api.admin()).json() == []


def test_device_listing_filters(api):
    api.enroll("a-1", "rpi5", group="lab", tags=["x"])
    api.enroll("b-1", "cpu", group="field")

    def names(query):
        return [d["name"] for d in api.client.get(f"/api/v1/devices{query}", headers=api.admin()).json()]

    assert names("") == ["a-1", "b-1"]
    assert (
        names("?target=rpi5") == ["a-1"] and names("?group=field") == ["b-1"] and names("?tag=x") == ["a-1"]
    )
    patched = api.client.patch("/api/v1/devices/b-1", json={"tags": ["x", "y"]}, headers=api.admin())
    assert patched.json()["tags"] == ["x", "y"] and names("?tag=x") == ["a-1", "b-1"]
