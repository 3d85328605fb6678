"""Fleet drift scored per version and group against the bundle's reference; the policy's triggers (drift
sustained, labeled samples, schedule, by hand) and their boundaries; one job per trigger event, however
many replicas look; claiming a job is exclusive."""

from __future__ import annotations

import math
import time

import pytest

from cloud_registry import db, drift, retraining
from cloud_registry import models as m
from edgebundle.manifest import DriftSummary
from edgewire.messages import InferenceStats, ModelRef, Telemetry, new_message_id
from registry_api import retraining as rs
from tests.cloud_registry.conftest import backend  # noqa: F401
from tests.cloud_registry.helpers import make_bundle
from tests.retraining.conftest import enroll_in, sample_body

REFERENCE = DriftSummary(
    samples=500,
    input_mean=[0.30],
    input_std=[0.35],
    confidence_hist=[0, 0, 0, 0, 0, 5, 10, 25, 60, 400],
    class_hist=[50] * 10,
)
LIKE_REFERENCE = DriftSummary(
    samples=100,
    input_mean=[0.31],
    input_std=[0.35],
    confidence_hist=[0, 0, 0, 0, 0, 1, 2, 5, 12, 80],
    class_hist=[10] * 10,
)
SHIFTED = DriftSummary(
    samples=100,
    input_mean=[0.45],
    input_std=[0.40],
    confidence_hist=[0, 2, 15, 25, 20, 15, 10, 6, 4, 3],
    class_hist=[2, 30, 5, 5, 25, 5, 3, 5, 15, 5],
)
POLICY = {"entry_point": {"callable": "toolchain.finetune_digits:finetune"}, "groups": ["field"]}


def _fleet(api, signing, tmp_path):  # type: ignore[no-untyped-def]
    assert api.push(make_bundle(tmp_path, signing[0], drift_reference=REFERENCE)).status_code == 201
    return {
        name: enroll_in(api, name, group)
        for name, group in (("cam-1", "field"), ("cam-2", "field"), ("cam-3", "lab"))
    }


def _send(api, headers, device: str, summary: DriftSummary, seq: int, version: int = 1) -> None:  # type: ignore[no-untyped-def]
    message = Telemetry(
        fleet="default",
        device=device,
        msg_id=new_message_id(),
        seq=seq,
        sent_at=time.time(),
        interval_s=1,
        model=ModelRef(name="digits", version=version, slot="a"),
        inference=InferenceStats(count=summary.samples, errors=0),
        drift=summary,
    )
    response = api.client.post(
        "/v1/device/telemetry",
        content=message.model_dump_json(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 204, response.text


def _score(api, now: float) -> int:  # type: ignore[no-untyped-def]
    with db.transaction(api.registry.factory) as session:
        return drift.score_fleet(session, window_s=60, interval_s=1.0, now=now)


def test_drift_is_scored_per_version_and_group_against_the_reference(rapi, signing, tmp_path):
    devices = _fleet(rapi, signing, tmp_path)
    for seq in range(3):
        _send(rapi, devices["cam-1"], "cam-1", SHIFTED, seq)
        _send(rapi, devices["cam-2"], "cam-2", SHIFTED, seq)
        _send(rapi, devices["cam-3"], "cam-3", LIKE_REFERENCE, seq)
    now = math.floor(time.time()) + 1.01  # early in a tick (1 s), after every message above
    assert _score(rapi, now) == 2  # (v1, field) and (v1, lab)
    assert _score(rapi, now + 0.2) == 0  # the same tick, scored again (another replica): stored once
    points = {
        p["group"]: p for p in rapi.client.get("/api/v1/models/digits/drift", headers=rapi.admin()).json()
    }
    field, lab = points["field"], points["lab"]
    assert field["devices"] == 2 and field["samples"] == 600 and lab["devices"] == 1 and lab["samples"] == 300
    assert field["psi_confidence"] > 1.0 and field["score"] == field["psi_confidence"]  # input drift
    assert lab["score"] < 0.05
    assert field["mean_shift_z"] > 5 and lab["mean_shift_z"] < 1
    only_lab = rapi.client.get("/api/v1/models/digits/drift?group=lab", headers=rapi.admin()).json()
    assert [p["group"] for p in only_lab] == ["lab"]


def _row(at: float, value: float, samples: int = 500) -> m.DriftScore:
    return m.DriftScore(
        at=at, samples=samples, score=value, psi_confidence=value, psi_class=0.0, mean_shift_z=0.0
    )


def test_a_run_above_the_threshold_is_strict_needs_samples_and_breaks_on_a_gap():
    trigger = rs.DriftTrigger(threshold=0.25, sustained_s=3, min_samples=100)
    rows = [_row(t, 0.5) for t in range(10)]
    assert drift.above_since(rows, trigger, now=9.5, interval_s=1).at == 0
    assert drift.above_since(rows, trigger, now=20, interval_s=1) is None  # no score lately: no run
    at_threshold = [*rows[:5], _row(5, 0.25), *rows[6:]]  # exactly at the threshold is not above it
    assert drift.above_since(at_threshold, trigger, now=9.5, interval_s=1).at == 6
    few = [*rows[:7], _row(7, 0.9, samples=99), *rows[8:]]  # too few samples to count
    assert drift.above_since(few, trigger, now=9.5, interval_s=1).at == 8
    gap = [*rows[:4], *[_row(t + 3, 0.5) for t in range(4, 10)]]  # 3 s without a score at 1 s ticks
    assert drift.above_since(gap, trigger, now=12.5, interval_s=1).at == 7
    assert drift.above_since([*rows, _row(10, 0.1)], trigger, now=10.5, interval_s=1) is None


def _label_all(api, headers, count: int) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    arrays = [np.full((1, 1, 8, 8), i / count, dtype=np.float32) for i in range(count)]
    body = sample_body("cam-1", arrays)
    assert api.client.post("/v1/device/samples", json=body, headers=headers).status_code == 200
    labels = [{"sample_id": s["sample_id"], "label": "1"} for s in body["samples"]]
    assert (
        api.client.post(
            "/api/v1/models/digits/labels", json={"labels": labels}, headers=api.admin()
        ).status_code
        == 200
    )


def _evaluate(api, now: float) -> list[int]:  # type: ignore[no-untyped-def]
    with db.transaction(api.registry.factory) as session:
        return [j.id for j in retraining.evaluate_triggers(session, now=now, interval_s=1.0)]


def test_sustained_drift_triggers_one_job_once_labels_are_in(rapi, signing, tmp_path, backend):  # noqa: F811
    devices = _fleet(rapi, signing, tmp_path)
    admin = rapi.admin()
    rapi.client.put("/api/v1/groups/field/sampling", json={"enabled": True}, headers=admin)
    policy = {
        **POLICY,
        "triggers": {"drift": {"threshold": 0.25, "sustained_s": 3, "min_samples": 100}},
        "min_labeled_samples": 3,
        "cooldown_s": 100,
    }
    assert (
        rapi.client.put("/api/v1/models/digits/retraining-policy", json=policy, headers=admin).status_code
        == 200
    )
    start = time.time() + 2  # scoring times ahead of the clock: every message below is inside the window
    for tick in range(6):  # one score a second, 5 s of drift in the field group only
        _send(rapi, devices["cam-1"], "cam-1", SHIFTED, tick)
        _send(rapi, devices["cam-3"], "cam-3", LIKE_REFERENCE, tick)
        assert _score(rapi, start + tick) == 2
        if tick == 2:
            assert _evaluate(rapi, start + tick) == []  # 2 s above: not sustained yet
    assert _evaluate(rapi, start + 5) == []  # sustained, but no labeled samples yet
    status = rapi.client.get("/api/v1/models/digits/retraining-policy", headers=admin).json()["status"]
    assert status["labeled_samples"] == 0 and status["drift"][0]["above_since"] == pytest.approx(start)
    _label_all(rapi, devices["cam-1"], 3)
    created = _evaluate(rapi, start + 5)
    assert len(created) == 1
    assert _evaluate(rapi, start + 5) == []  # a second look (another replica): the same event, no new job
    job = rapi.client.get(f"/api/v1/jobs/{created[0]}", headers=admin).json()
    assert job["state"] == "queued" and job["trigger"] == "drift" and job["parent_version"] == 1
    details = job["trigger_details"]
    assert details["group"] == "field" and details["value"] > 0.25 and details["sustained_s"] >= 3
    assert details["labeled_samples"] == 3

    # A job for the same drift event can never be made twice, even by two registries racing.
    with db.transaction(rapi.registry.factory) as session:
        record = session.query(m.RetrainingPolicyRecord).one()
        model = session.get(m.Model, record.model_id)
        key = session.get(m.RetrainingJob, created[0]).trigger_key
        again = retraining.create_job(
            session,
            model=model,
            record=record,
            trigger="drift",
            key=key,
            details={},
            parent_version=1,
            actor="x",
        )
    assert again is None
    cancelled = rapi.client.post(f"/api/v1/jobs/{created[0]}/cancel", headers=admin).json()
    assert cancelled["state"] == "cancelled"
    for tick in range(6, 12):
        _send(rapi, devices["cam-1"], "cam-1", SHIFTED, tick)
        _score(rapi, start + tick)
    assert _evaluate(rapi, start + 11) == []  # within the cooldown (100 s) of the last automatic job
    with db.transaction(rapi.registry.factory) as session:
        assert session.query(m.RetrainingJob).count() == 1


def test_labeled_samples_schedule_and_manual_triggers(rapi, signing, tmp_path):
    devices = _fleet(rapi, signing, tmp_path)
    admin = rapi.admin()
    client = rapi.client
    client.put("/api/v1/groups/field/sampling", json={"enabled": True, "max_per_day": 1000}, headers=admin)
    missing = client.post("/api/v1/models/digits/retrain", json={}, headers=admin)
    assert missing.status_code == 404 and "no retraining policy" in missing.json()["detail"]
    policy = {
        **POLICY,
        "triggers": {"labeled_samples": {"min_new": 4}},
        "min_labeled_samples": 2,
        "cooldown_s": 0,
    }
    client.put("/api/v1/models/digits/retraining-policy", json=policy, headers=admin)
    too_few = client.post("/api/v1/models/digits/retrain", json={"reason": "try"}, headers=admin)
    assert too_few.status_code == 409 and "0 labeled samples" in too_few.json()["detail"]
    _label_all(rapi, devices["cam-1"], 3)
    assert _evaluate(rapi, time.time()) == []  # 3 new labeled samples; the trigger wants 4
    manual = client.post("/api/v1/models/digits/retrain", json={"reason": "try"}, headers=admin)
    assert manual.status_code == 201 and manual.json()["trigger"] == "manual"
    busy = client.post("/api/v1/models/digits/retrain", json={}, headers=admin)
    assert busy.status_code == 409 and "already" in busy.json()["detail"]
    client.post(f"/api/v1/jobs/{manual.json()['id']}/cancel", headers=admin)
    _label_all(rapi, devices["cam-1"], 1)
    fired = _evaluate(rapi, time.time())
    assert len(fired) == 1
    job = client.get(f"/api/v1/jobs/{fired[0]}", headers=admin).json()
    assert job["trigger"] == "labeled_samples" and job["trigger_details"]["new_labeled_samples"] == 4
    client.post(f"/api/v1/jobs/{fired[0]}/cancel", headers=admin)

    schedule = {
        **POLICY,
        "triggers": {"schedule": {"every_s": 3600}},
        "min_labeled_samples": 1,
        "cooldown_s": 0,
    }
    updated_at = client.put("/api/v1/models/digits/retraining-policy", json=schedule, headers=admin).json()[
        "updated_at"
    ]
    slot_end = (updated_at // 3600 + 1) * 3600
    assert _evaluate(rapi, slot_end - 1) == []  # still the slot the policy was set in
    scheduled = _evaluate(rapi, slot_end + 1)
    assert len(scheduled) == 1
    assert client.get(f"/api/v1/jobs/{scheduled[0]}", headers=admin).json()["trigger"] == "schedule"


def test_only_one_replica_claims_a_queued_job(rapi, signing, tmp_path, backend):  # noqa: F811
    from cloud_registry.jobs.manager import JobManager
    from cloud_registry.jobs.runners import LocalProcessRunner

    devices = _fleet(rapi, signing, tmp_path)
    admin = rapi.admin()
    rapi.client.put("/api/v1/groups/field/sampling", json={"enabled": True}, headers=admin)
    rapi.client.put(
        "/api/v1/models/digits/retraining-policy", json={**POLICY, "min_labeled_samples": 1}, headers=admin
    )
    _label_all(rapi, devices["cam-1"], 2)
    job_id = rapi.client.post("/api/v1/models/digits/retrain", json={}, headers=admin).json()["id"]
    registry = rapi.registry

    def replica() -> JobManager:
        return JobManager(
            registry.factory,
            settings=registry.settings,
            store=registry.store,
            trusted_keys=registry.trusted_keys,
            publish=lambda _: None,
            runner=LocalProcessRunner(),
        )

    first, second = replica(), replica()
    now = time.time()
    assert first.claim(job_id, now) == 1
    assert second.claim(job_id, now) is None
    job = rapi.client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()
    assert job["state"] == "running" and job["attempt"] == 1 and job["new_version"] == 2
    # The claiming replica stops (or dies): once its lease is over, the other queues the job again.
    assert second.requeue_lost(now + 1) == []  # the lease still holds
    assert second.requeue_lost(now + registry.settings.jobs_lease_s + 1) == [job_id]
    assert second.claim(job_id, now + 100) == 2
    assert first.claim(job_id, now + 100) is None
    again = rapi.client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()
    assert again["attempt"] == 2 and again["new_version"] == 2  # the same version number, whoever runs it
    second.close()  # a clean stop gives the job back at once
    assert rapi.client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()["state"] == "queued"
