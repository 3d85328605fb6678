"""Webhooks against a real HTTP receiver on loopback: events in order with a valid HMAC signature, retried
until a receiver that was down comes back, no stall of the registry while the receiver hangs, giving up
after the last attempt (seen in the API and on /metrics), the events of rollouts, drift and revocations,
and bad webhook settings refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.cloud_registry.conftest import Api, make_settings
from tests.cloud_registry.fleet_sim import SimFleet
from tests.cloud_registry.helpers import make_bundle
from tests.device_agent.harness import wait_for
from tests.services import free_port

SECRET = "whsec-test-0123456789abcdef"


class Receiver:
    """A real HTTP server that checks each delivery's signature and keeps the bodies in arrival order.
    `status` is what it answers; `hang` holds every request until released (a receiver that never answers)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bodies: list[dict] = []
        self.bad_signatures = 0
        self.status = 200
        self.hang = threading.Event()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hang.is_set():
                    receiver.release.wait(30)
                timestamp = self.headers["X-Edgectl-Timestamp"]
                expected = (
                    "sha256="
                    + hmac.new(SECRET.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
                )
                fresh = abs(time.time() - int(timestamp)) < 300
                if not (hmac.compare_digest(expected, self.headers["X-Edgectl-Signature"]) and fresh):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                if receiver.status == 200:
                    body = json.loads(raw)
                    assert body["event"] == self.headers["X-Edgectl-Event"]
                    receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def hooked(tmp_path, signing, urls, **extra):  # type: ignore[no-untyped-def]
    from cloud_registry.main import create_app

    settings = make_settings(
        tmp_path / "registry",
        signing[1],
        webhook_urls=urls,
        webhook_secret=SECRET,
        webhook_backoff_s=0.2,
        webhook_backoff_max_s=0.5,
        **extra,
    )
    return create_app(settings)


def deliveries(api: Api, state: str | None = None) -> list[dict]:
    response = api.client.get(
        "/api/v1/webhooks/deliveries", params={"state": state} if state else {}, headers=api.admin()
    )
    assert response.status_code == 200, response.text
    return response.json()


def revoke(api: Api, name: str) -> None:
    assert api.client.delete(f"/api/v1/devices/{name}", headers=api.admin()).status_code in (200, 204)


def test_events_arrive_in_order_signed(tmp_path, signing, receiver):
    with TestClient(hooked(tmp_path, signing, [receiver.url])) as client:
        api = Api(client, client.app.state.registry, tmp_path / "registry")
        for name in ("cam-1", "cam-2", "cam-3"):
            api.enroll(name, group="lobby")
        for name in ("cam-2", "cam-1", "cam-3"):
            revoke(api, name)
        revoke(api, "cam-1")  # revoking again is no new event
        wait_for(lambda: len(receiver.bodies) == 3, "three deliveries")
        assert [b["data"]["device"] for b in receiver.bodies] == ["cam-2", "cam-1", "cam-3"]
        first = receiver.bodies[0]
        assert (
            first["event"] == "device.revoked"
            and first["text"] == "Device cam-2 (cpu, group lobby) was revoked"
        )
        assert set(first) == {"id", "event", "at", "text", "data"}
        assert receiver.bad_signatures == 0
        wait_for(lambda: {d["state"] for d in deliveries(api)} == {"delivered"}, "all marked delivered")
        assert all(d["host"] == "127.0.0.1" and "hook" not in json.dumps(d) for d in deliveries(api))


def test_a_dead_receiver_is_retried_until_it_comes_back_and_never_stalls_the_registry(tmp_path, signing):
    down = Receiver()  # its port is free: nothing listens yet (connection refused)
    hanging = Receiver().start()  # answers nothing until released (timeouts)
    hanging.hang.set()
    app = hooked(tmp_path, signing, [down.url, hanging.url], webhook_timeout_s=2.0)
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        for name in ("a-1", "a-2"):
            api.enroll(name)
        revoke(api, "a-1")
        revoke(api, "a-2")

        def retried() -> bool:
            rows = [d for d in deliveries(api, "pending") if d["attempts"] >= 2]
            return any(d["last_error"] == "ConnectError" for d in rows)

        wait_for(retried, "the dead receiver's first event retried")
        # While one receiver refuses and the other hangs, the registry answers and works as ever.
        api.enroll("a-3")
        assert len(client.get("/api/v1/devices", headers=api.admin()).json()) >= 1
        samples = client.get("/metrics", headers=api.admin()).text
        assert 'edgectl_registry_webhook_deliveries{state="pending"} 4.0' in samples
        by_event = {}
        for d in deliveries(api, "pending"):
            by_event.setdefault(d["event_id"], []).append(d)
        assert len(by_event) == 2  # two events, each pending for both receivers

        down.start()  # it comes back: both events, in order
        try:
            wait_for(lambda: len(down.bodies) == 2, "the revived receiver's deliveries", 30)
            assert [b["data"]["device"] for b in down.bodies] == ["a-1", "a-2"]
            hanging.hang.clear()
            hanging.release.set()
            wait_for(
                lambda: len(hanging.bodies) == 2, "the hanging receiver's deliveries once it answers", 30
            )
            assert [b["data"]["device"] for b in hanging.bodies] == ["a-1", "a-2"]
        finally:
            down.stop()
            hanging.stop()


def test_gives_up_after_the_last_attempt_and_goes_on(tmp_path, signing, receiver):
    receiver.status = 500
    app = hooked(tmp_path, signing, [receiver.url], webhook_max_attempts=2)
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        api.enroll("b-1")
        api.enroll("b-2")
        revoke(api, "b-1")
        wait_for(lambda: deliveries(api, "failed"), "the delivery given up")
        failed = deliveries(api, "failed")[0]
        assert failed["attempts"] == 2 and failed["last_error"] == "HTTP 500"
        assert (
            'edgectl_registry_webhook_deliveries{state="failed"} 1.0'
            in client.get("/metrics", headers=api.admin()).text
        )
        receiver.status = 200
        revoke(api, "b-2")  # the next event is not stuck behind the failed one
        wait_for(lambda: receiver.events() == ["device.revoked"], "the next event delivered")
        assert receiver.bodies[0]["data"]["device"] == "b-2"

        # Sent again by hand once the receiver is fixed; only a failed delivery can be.
        reader = api.token("read-only")
        assert (
            client.post(f"/api/v1/webhooks/deliveries/{failed['id']}/retry", headers=reader).status_code
            == 403
        )
        retried = client.post(f"/api/v1/webhooks/deliveries/{failed['id']}/retry", headers=api.admin())
        assert retried.status_code == 200 and retried.json()["state"] == "pending", retried.text
        wait_for(lambda: len(receiver.bodies) == 2, "the retried delivery")
        assert receiver.bodies[1]["data"]["device"] == "b-1"
        again = client.post(f"/api/v1/webhooks/deliveries/{failed['id']}/retry", headers=api.admin())
        assert again.status_code == 409 and "only a failed one" in again.json()["detail"]
        assert client.post("/api/v1/webhooks/deliveries/999/retry", headers=api.admin()).status_code == 404


def test_rollout_events_from_the_reconciler(tmp_path, signing, receiver):
    app = hooked(tmp_path, signing, [receiver.url])
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        for version in (1, 2, 3):
            assert api.push(make_bundle(tmp_path, signing[0], version=version)).status_code == 201
        fleet = SimFleet(api)
        fleet.enroll(4)
        for _ in range(3):
            fleet.report_running(1, p95=10.0, confidence=[0] * 8 + [20, 80])

        def roll(version: int) -> dict:
            body = {"model": "digits", "version": version, "waves": [100], "policy": {"bake_s": 0}}
            response = client.post("/api/v1/rollouts", json=body, headers=api.admin())
            assert response.status_code == 201, response.text
            return response.json()

        first = roll(2)
        updated = fleet.apply_desired("SUCCEEDED")
        for _ in range(3):
            fleet.report_running(2, names=updated, p95=10.0, confidence=[0] * 8 + [20, 80])
        app.state.registry.reconciler.tick()
        app.state.registry.reconciler.tick()
        second = roll(3)
        updated = fleet.apply_desired("SUCCEEDED")
        fleet.report_running(3, names=updated, p95=20.0, confidence=[0] * 8 + [20, 80])  # p95 doubled
        app.state.registry.reconciler.tick()
        wait_for(lambda: len(receiver.bodies) >= 2, "two rollout events")
    completed, halted = receiver.bodies[:2]
    assert completed["event"] == "rollout.completed" and completed["data"]["rollout"] == first["id"]
    assert halted["event"] == "rollout.halted" and halted["data"]["rollout"] == second["id"]
    assert halted["data"]["version"] == 3 and "p95_regression" in halted["data"]["reason"]
    assert halted["text"].startswith(f"Rollout {second['id']} of digits v3 halted: health gate crossed")


def test_drift_crossing_its_policy_is_one_event(tmp_path, signing, receiver):
    from cloud_registry import db, drift
    from tests.retraining.test_drift_and_triggers import LIKE_REFERENCE, REFERENCE, SHIFTED, _send

    app = hooked(tmp_path, signing, [receiver.url])
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        assert api.push(make_bundle(tmp_path, signing[0], drift_reference=REFERENCE)).status_code == 201
        policy = {
            "entry_point": {"callable": "toolchain.finetune_digits:finetune"},
            "groups": ["field"],
            "triggers": {"drift": {"threshold": 0.25}},
        }
        assert (
            client.put(
                "/api/v1/models/digits/retraining-policy", json=policy, headers=api.admin()
            ).status_code
            == 200
        )
        device = {"Authorization": f"Bearer {api.enroll('cam-1', group='field')['device_token']}"}

        def score(summary, seq: int) -> None:
            """One telemetry message, scored alone (a window of 0.5 s) in a tick (1 s) of its own."""
            time.sleep(1.0)
            _send(api, device, "cam-1", summary, seq)
            with db.transaction(app.state.registry.factory) as session:
                assert drift.score_fleet(session, window_s=0.5, interval_s=1.0, now=time.time() + 0.01) == 1

        score(LIKE_REFERENCE, 0)  # below
        score(SHIFTED, 1)  # crosses: one event
        score(SHIFTED, 2)  # still above: none
        wait_for(lambda: receiver.bodies, "the drift event")
        time.sleep(1.0)
    assert receiver.events() == ["drift.above_policy"]
    data = receiver.bodies[0]["data"]
    assert (data["model"], data["version"], data["group"], data["threshold"]) == ("digits", 1, "field", 0.25)
    assert data["value"] > 1.0


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"webhook_urls": ["ftp://hooks.example/x"], "webhook_secret": "s"}, "is not an http(s) URL"),
        ({"webhook_urls": ["https://"], "webhook_secret": "s"}, "is not an http(s) URL"),
        ({"webhook_urls": ["https://hooks.example/x"]}, "webhook_urls needs webhook_secret"),
    ],
)
def test_bad_webhook_settings_are_refused(tmp_path, extra, words):
    from pydantic import ValidationError

    from cloud_registry.core.config import Settings

    with pytest.raises(ValidationError) as info:
        Settings(data_dir=tmp_path, **extra)
    assert words in str(info.value) and "hooks.example/x" not in str(info.value).split("webhook_urls:")[0]


def test_an_event_is_sent_only_when_its_change_commits(tmp_path, signing):
    """The outbox row rides the change's transaction: rolled back, nothing is queued."""
    from cloud_registry import db, webhooks
    from cloud_registry import devices as device_records

    app = hooked(tmp_path, signing, ["http://127.0.0.1:9/hook"])
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        api.enroll("c-1")
        factory = app.state.registry.factory
        with factory() as session:
            device_records.revoke_device(session, name="c-1")
            session.rollback()
        with db.transaction(factory) as session:
            assert webhooks.delivery_counts(session) == {"pending": 0, "delivered": 0, "failed": 0}


def test_old_delivered_and_failed_rows_are_pruned_and_pending_ones_kept(tmp_path, signing):
    """Delivered rows go after KEEP_DELIVERED_S, failed ones KEEP_FAILED_S after their last attempt; a
    pending row stays whatever its age, and so does anything younger."""
    from cloud_registry import db, webhooks
    from cloud_registry import models as m

    app = hooked(tmp_path, signing, [])  # no delivery thread, whose own pruning would race this one's
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        factory = app.state.registry.factory
        assert app.state.registry.webhooks is None
        now = time.time()
        old_delivered = now - webhooks.KEEP_DELIVERED_S - 60
        old_failed = now - webhooks.KEEP_FAILED_S - 60
        rows = {
            "delivered-old": dict(
                state="delivered", delivered_at=old_delivered, next_attempt_at=old_delivered
            ),
            "delivered-new": dict(state="delivered", delivered_at=now - 60, next_attempt_at=now - 60),
            "failed-old": dict(state="failed", next_attempt_at=old_failed),
            "failed-week": dict(state="failed", next_attempt_at=old_delivered),  # past a week, not a month
            "pending-old": dict(state="pending", next_attempt_at=now + 3600),
        }
        with db.transaction(factory) as session:
            for name, fields in rows.items():
                session.add(
                    m.WebhookDelivery(
                        event_id=name, event="device.revoked", url="http://127.0.0.1:9/other", body={},
                        created_at=old_failed, attempts=1, **fields,
                    )
                )  # fmt: skip
        with db.transaction(factory) as session:
            assert webhooks.prune(session, now=now) == 2
        with db.transaction(factory) as session:
            left = set(session.scalars(select(m.WebhookDelivery.event_id)))
        assert left == {"delivered-new", "failed-week", "pending-old"}
        assert {d["state"] for d in deliveries(api)} == {"delivered", "failed", "pending"}


def test_a_replica_announces_the_crossings_it_scored_when_another_wrote_part_of_the_tick(
    tmp_path, signing, backend, request
):
    """Two replicas that race on a tick each write part of it: this one wrote the field group's score,
    another the lab group's. The field crossing is announced here (it used to be dropped because not
    every score of the tick went in), the lab one is left to the replica that wrote it."""
    from cloud_registry import db, drift, webhooks
    from cloud_registry import models as m
    from tests.retraining.test_drift_and_triggers import REFERENCE, SHIFTED, _send

    database_url = request.getfixturevalue("postgres").database() if backend == "postgresql" else ""
    # Nothing listens on the URL: the rows stay to be read.
    app = hooked(tmp_path, signing, ["http://127.0.0.1:9/hook"], database_url=database_url)
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        assert api.push(make_bundle(tmp_path, signing[0], drift_reference=REFERENCE)).status_code == 201
        policy = {
            "entry_point": {"callable": "toolchain.finetune_digits:finetune"},
            "groups": ["field", "lab"],
            "triggers": {"drift": {"threshold": 0.25}},
        }
        put = client.put("/api/v1/models/digits/retraining-policy", json=policy, headers=api.admin())
        assert put.status_code == 200, put.text
        for seq, (name, group) in enumerate((("cam-1", "field"), ("cam-2", "lab"))):
            token = api.enroll(name, group=group)["device_token"]
            _send(api, {"Authorization": f"Bearer {token}"}, name, SHIFTED, seq)
        now = time.time() + 0.01
        factory = app.state.registry.factory
        with db.transaction(factory) as session:
            model_id = session.scalar(select(m.Model.id).where(m.Model.name == "digits"))
            session.add(  # the other replica's score of the lab group for this very tick
                m.DriftScore(
                    model_id=model_id, model_version=1, device_group="lab", bucket=int(now // 1.0), at=now,
                    window_s=5.0, devices=1, samples=SHIFTED.samples, psi_confidence=1.0, psi_class=0.0,
                    mean_shift_z=0.0, score=1.0, summary=SHIFTED.model_dump(mode="json"),
                )
            )  # fmt: skip
        with db.transaction(factory) as session:
            assert drift.score_fleet(session, window_s=5.0, interval_s=1.0, now=now) == 1
        with db.transaction(factory) as session:
            events = [row for row in webhooks.deliveries(session) if row.event == "drift.above_policy"]
            assert [row.body["data"]["group"] for row in events] == ["field"]
