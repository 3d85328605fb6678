"""The retraining loop acts on evidence, not on echoes, against a real Mosquitto (telemetry over MQTT) and the
real registry:

- after a job, the drift that caused it does not make another job without new labels (it made four jobs
  and four canary rollouts in 3.5 minutes); the version the job made is judged on its own drift once live;
- a skewed mix of predicted classes (ordinary digits sent in class order: psi_class up to 6.9) is reported
  apart from input drift and triggers nothing unless the policy opts in;
- a window of a handful of inferences is not scored (one inference scored 8.28).

The job side (identical candidates, ties without new labels, bad labels) runs real jobs in test_verdicts.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from cloud_registry import db, drift, retraining, samples
from cloud_registry import models as m
from cloud_registry.jobs import candidate
from edgebundle.manifest import DriftSummary
from edgewire.messages import InferenceStats, ModelRef, Telemetry, new_message_id
from registry_api import retraining as rs
from tests.cloud_registry.conftest import Api, postgres  # noqa: F401
from tests.cloud_registry.helpers import make_bundle
from tests.cloud_registry.mqtt_sim import MqttDevice, wait_for
from tests.retraining.conftest import retraining_settings
from tests.retraining.test_drift_and_triggers import LIKE_REFERENCE, POLICY, REFERENCE, SHIFTED, _label_all
from tests.services import Mosquitto

TICK_S, WINDOW_S = 0.5, 1.0  # real time: telemetry arrives over MQTT as it would from devices


@pytest.fixture
def mqtt_rapi(tmp_path, signing, postgres) -> Iterator[tuple[Api, Mosquitto]]:  # noqa: F811
    """A registry (TestClient, on PostgreSQL) that ingests from a real Mosquitto."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    broker = Mosquitto(tmp_path / "broker").start()
    settings = retraining_settings(
        tmp_path / "registry",
        signing[1],
        database_url=postgres.database(),
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_client_id=f"registry-{time.monotonic_ns()}",
        ingest_flush_s=0.05,
    )
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(client, client.app.state.registry, tmp_path / "registry")
            assert api.registry.link.subscribed.wait(10)
            yield api, broker
    finally:
        broker.stop()


class Fleet:
    """Devices of one registry that send telemetry with drift summaries over MQTT, and the loop's clock."""

    def __init__(self, api: Api, broker: Mosquitto) -> None:
        self.api, self.broker = api, broker
        self.devices: dict[str, MqttDevice] = {}
        self.sent = 0

    def enroll(self, name: str, group: str) -> dict[str, str]:
        answer = self.api.enroll(name, group=group)
        self.devices[name] = MqttDevice(self.broker.port, name)
        assert self.devices[name].wait_connected()
        return {"Authorization": f"Bearer {answer['device_token']}"}

    def send(self, device: str, summary: DriftSummary, version: int = 1) -> None:
        self.sent += 1
        self.devices[device].publish(
            Telemetry(
                fleet="default",
                device=device,
                msg_id=new_message_id(),
                seq=self.sent,
                sent_at=time.time(),
                interval_s=TICK_S,
                model=ModelRef(name="digits", version=version, slot="a"),
                inference=InferenceStats(count=summary.samples, errors=0),
                drift=summary,
            )
        )

    def ingested(self) -> int:
        with self.api.registry.factory() as session:
            return session.scalar(select(func.count()).select_from(m.TelemetryRecord)) or 0

    def run(self, seconds: float, *sending: tuple[str, DriftSummary, int]) -> None:
        """Every tick for `seconds`: each (device, summary, version) sends, the registry ingests and scores."""
        end = time.time() + seconds
        while True:
            for device, summary, version in sending:
                self.send(device, summary, version)
            wait_for(lambda: self.ingested() == self.sent)
            with db.transaction(self.api.registry.factory) as session:
                drift.score_fleet(session, window_s=WINDOW_S, interval_s=TICK_S, now=time.time())
            if time.time() >= end:
                return
            time.sleep(TICK_S)

    def evaluate(self) -> list[m.RetrainingJob]:
        with db.transaction(self.api.registry.factory) as session:
            jobs = retraining.evaluate_triggers(session, now=time.time(), interval_s=TICK_S)
            return [(j.id, j.parent_version, j.trigger_details) for j in jobs]  # type: ignore[misc]

    def close(self) -> None:
        for device in self.devices.values():
            device.close()


@pytest.fixture
def fleet(mqtt_rapi) -> Iterator[Fleet]:
    fleet = Fleet(*mqtt_rapi)
    yield fleet
    fleet.close()


def _policy(api: Api, **drift_trigger) -> None:  # type: ignore[no-untyped-def]
    policy = {
        **POLICY,
        "triggers": {"drift": {"threshold": 0.25, "sustained_s": 1.5, "min_samples": 100, **drift_trigger}},
        "min_labeled_samples": 3,
        "cooldown_s": 0,
    }
    answer = api.client.put("/api/v1/models/digits/retraining-policy", json=policy, headers=api.admin())
    assert answer.status_code == 200, answer.text


def _finish(api: Api, job_id: int, *, new_version: int) -> None:
    """The job ran: trained on a snapshot of today's labels, registered `new_version` and rolled it out
    (what a real job does is test_verdicts.py's and test_e2e_retraining.py's subject; here, what the
    trigger makes of it)."""
    with db.transaction(api.registry.factory) as session:
        job = session.get(m.RetrainingJob, job_id)
        snapshot = samples.create_snapshot(
            session,
            api.registry.store,
            model=job.model,
            groups=["field"],
            holdout_fraction=0.3,
            folder=api.data_dir / "snapshot",
        )
        job.snapshot_id, job.state, job.phase = snapshot.id, "succeeded", "done"
        job.new_version, job.attempt, job.finished_at = new_version, 1, time.time()


def test_after_a_job_only_new_evidence_makes_another(fleet, signing, tmp_path):
    api = fleet.api
    for version in (1, 2):
        archive = make_bundle(
            tmp_path, signing[0], version=version, source=f"source-{version}", drift_reference=REFERENCE
        )
        assert api.push(archive).status_code == 201
    cam = fleet.enroll("cam-1", "field")
    fleet.enroll("cam-2", "field")
    api.client.put("/api/v1/groups/field/sampling", json={"enabled": True}, headers=api.admin())
    _label_all(api, cam, 3)
    _policy(api)

    fleet.run(2.0, ("cam-1", SHIFTED, 1), ("cam-2", SHIFTED, 1))
    first = fleet.evaluate()
    assert [(parent, details["group"]) for _, parent, details in first] == [(1, "field")]
    _finish(api, first[0][0], new_version=2)

    # cam-2 is the canary on v2 now; cam-1 still runs v1 and still sees the shift. v1's drift is what the
    # job answered: with no new labels, retraining v1 again would make the same model (a byte-identical v3).
    fleet.run(2.5, ("cam-1", SHIFTED, 1))
    assert fleet.evaluate() == []
    status = api.client.get("/api/v1/models/digits/retraining-policy", headers=api.admin()).json()["status"]
    assert {(s["version"], s["above_since"] is not None) for s in status["drift"]} >= {(1, True)}

    # The new version is judged on its own drift against its own reference, measured once it is live.
    fleet.run(2.0, ("cam-1", SHIFTED, 1), ("cam-2", SHIFTED, 2))
    second = fleet.evaluate()
    assert [parent for _, parent, _ in second] == [2]
    with db.transaction(api.registry.factory) as session:
        job = session.get(m.RetrainingJob, second[0][0])
        assert job.created_at > session.get(m.RetrainingJob, first[0][0]).finished_at
        job.state, job.finished_at = "cancelled", time.time()

    # New labels are new evidence: v1's drift, still there, counts again (after the last job ended).
    _label_all(api, cam, 2)
    fleet.run(3.0, ("cam-1", SHIFTED, 1))  # a score counts once its whole window (1 s) is after that job
    assert [parent for _, parent, _ in fleet.evaluate()] == [1]


def _ordered(label: int, samples: int = 100) -> DriftSummary:
    """Ordinary digits of one class, as a camera that sees the classes in order summarizes a window."""
    hist = [0] * 10
    hist[label] = samples
    return LIKE_REFERENCE.model_copy(update={"samples": samples, "class_hist": hist})


def test_a_skewed_class_mix_is_no_drift_unless_the_policy_says_so(fleet, signing, tmp_path):
    api = fleet.api
    assert api.push(make_bundle(tmp_path, signing[0], drift_reference=REFERENCE)).status_code == 201
    cam = fleet.enroll("cam-1", "field")
    fleet.enroll("cam-2", "lab")
    api.client.put("/api/v1/groups/field/sampling", json={"enabled": True}, headers=api.admin())
    _label_all(api, cam, 3)
    _policy(api)

    one = LIKE_REFERENCE.model_copy(
        update={"samples": 1, "class_hist": [0, 0, 0, 0, 0, 0, 0, 1, 0, 0], "confidence_hist": [1] + [0] * 9}
    )
    fleet.run(2.0, ("cam-1", _ordered(3), 1), ("cam-2", one, 1))
    points = api.client.get("/api/v1/models/digits/drift", headers=api.admin()).json()
    assert points and {p["group"] for p in points} == {"field"}  # lab's windows of one inference: unscored
    assert min(p["samples"] for p in points) >= drift.MIN_WINDOW_SAMPLES
    assert min(p["psi_class"] for p in points) > 2.0  # the prediction mix, reported as it is
    assert max(p["psi_confidence"] for p in points) < 0.15
    assert max(p["score"] for p in points) < 0.15  # the input drift the trigger watches
    assert fleet.evaluate() == []
    status = api.client.get("/api/v1/models/digits/retraining-policy", headers=api.admin()).json()["status"]
    assert status["drift"][0]["above_since"] is None

    _policy(api, prediction_mix=True)  # a policy that wants a skewed class mix to count, opts in
    fleet.run(2.0, ("cam-1", _ordered(3), 1))
    fired = fleet.evaluate()
    assert len(fired) == 1 and fired[0][2]["psi_class"] > 2.0 and fired[0][2]["value"] > 2.0


def test_policy_show_says_a_job_waits_for_labels(fleet, signing, tmp_path):
    from edgectl.retrain import _policy_text
    from registry_api.retraining import PolicyInfo

    api = fleet.api
    assert api.push(make_bundle(tmp_path, signing[0], drift_reference=REFERENCE)).status_code == 201
    fleet.enroll("cam-1", "field")
    _policy(api)
    fleet.run(2.0, ("cam-1", SHIFTED, 1))
    assert fleet.evaluate() == []
    info = api.client.get("/api/v1/models/digits/retraining-policy", headers=api.admin()).json()
    assert info["status"]["blocked"] == (
        "the drift trigger fires, but no job can start for want of labels: 0 labeled samples, "
        "the policy needs 3 (edgectl retrain label)"
    )
    typed = PolicyInfo.model_validate(info)  # what the typed client hands the CLI
    assert f"blocked: {info['status']['blocked']}" in _policy_text(typed).splitlines()


def test_a_canary_that_answers_one_class_in_the_field_is_rolled_back(fleet, signing, tmp_path):
    from tests.cloud_registry.helpers import update_status

    api, registry = fleet.api, fleet.api.registry
    for version in (1, 2):
        archive = make_bundle(
            tmp_path, signing[0], version=version, source=f"source-{version}", drift_reference=REFERENCE
        )
        assert api.push(archive).status_code == 201
    fleet.enroll("cam-1", "field")
    commands = fleet.devices["cam-1"]
    commands.subscribe(commands.topics.command_subscription)
    policy = {
        **POLICY,
        "rollout": {"gates": {"bake_s": 3600, "min_baked_s": 1, "min_device_inferences": 100}},
    }
    assert (
        api.client.put(
            "/api/v1/models/digits/retraining-policy", json=policy, headers=api.admin()
        ).status_code
        == 200
    )
    fleet.run(1.0, ("cam-1", LIKE_REFERENCE, 1))  # the parent's behaviour on this device: every class

    # v2 was accepted by job 1 (what test_verdicts.py's jobs decide) and its canary rollout starts.
    with db.transaction(registry.factory) as session:
        record = session.query(m.RetrainingPolicyRecord).one()
        job = retraining.create_job(
            session,
            model=session.get(m.Model, record.model_id),
            record=record,
            trigger="manual",
            key="manual:canary",
            details={},
            parent_version=1,
            actor="test",
        )
        job.state, job.phase, job.new_version, job.reason = "succeeded", "done", 2, "accepted"
        publications = candidate.roll_out_candidate(
            session, job, rs.RetrainingPolicy.model_validate(policy), public_url=registry.settings.public_url
        )
        job_id, rollout_id = job.id, job.rollout_id
    registry.publish(publications)
    desired = wait_for(lambda: [d for d in commands.messages("desired") if d.get("version") == 2])[0]
    fleet.devices["cam-1"].publish(
        update_status(
            "cam-1", 1000, update_id=desired["update_id"], state="SUCCEEDED", to_version=2, from_version=1,
            rollout_id=rollout_id,
        )
    )  # fmt: skip
    wait_for(lambda: _rollout(api, rollout_id)["waves"][0]["succeeded"] == 1)
    registry.jobs.tick()  # the retraining loop's pass: no evidence on v2 yet
    assert api.client.get(f"/api/v1/jobs/{job_id}", headers=api.admin()).json()["state"] == "succeeded"

    fleet.run(1.5, ("cam-1", _ordered(0), 2))  # v2 answers "0" for whatever the camera sees
    registry.jobs.tick()
    job = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.admin()).json()
    assert job["state"] == "rejected" and job["phase"] == "canary"
    assert job["reason"].startswith("rejected in the field: prediction mix PSI ")
    assert "against v1 on the same 1 device; rollout" in job["reason"] and "; hint: " in job["reason"]
    assert job["outcome"]["canary"]["prediction_mix_psi"] > 2
    assert _rollout(api, rollout_id)["state"] == "rolled_back"
    wait_for(lambda: any(d.get("version") == 1 for d in commands.messages("desired")))  # over the broker


def _rollout(api: Api, rollout_id: int) -> dict:
    return api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=api.admin()).json()
