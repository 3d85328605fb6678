"""Retraining jobs run for real by the local process runner: the owner's entry point, `edgectl build` of
every target of the parent, and the held-out comparison. A candidate worse than its parent is registered
with its lineage and rejected with the figures; a failing entry point fails the job with its own error
line; and a registry killed mid-job (SIGKILL) neither loses the job nor makes a second version of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.device_agent.harness import wait_for
from tests.retraining.conftest import ADMIN_TOKEN, EDGECTL, retraining_settings, sample_body
from tests.retraining.digits import REPO, model_input, shifted, split, subprocess_env
from tests.services import free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL = "digits-cnn"


def command_policy(mode: str, **params) -> dict:  # type: ignore[no-untyped-def]
    return {
        "entry_point": {
            "command": [sys.executable, "-m", "tests.retraining.entries", mode],
            "params": params,
            "env": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
            "timeout_s": 300,
        },
        "groups": ["field"],
        "min_labeled_samples": 20,
        "evaluation": {"min_holdout": 5},
        "build": {"extra_args": ["--bench-runs", "3", "--allow-slower-int8"], "max_drop": 100},
    }


def prepare(client, digits_v1, policy: dict, *, samples: int = 60, label=str) -> None:  # type: ignore[no-untyped-def]
    """v1 pushed with its source, a device in group `field` that uploaded shifted digits, all labeled
    (`label`: the label file's entry for a digit; a labeler who gets them right by default)."""
    pushed = client.post(
        "/api/v1/bundles",
        content=digits_v1.archive.read_bytes(),
        headers={**ADMIN, "Content-Type": "application/octet-stream"},
    )
    assert pushed.status_code == 201, pushed.text
    source = client.put(
        f"/api/v1/models/{MODEL}/versions/1/source", content=digits_v1.model.read_bytes(), headers=ADMIN
    )
    assert source.status_code == 200, source.text
    token = client.post("/api/v1/enrollment-tokens", json={"group": "field"}, headers=ADMIN).json()["token"]
    device = client.post("/v1/enroll", json={"token": token, "name": "cam-1", "target": "cpu"}).json()
    client.put("/api/v1/groups/field/sampling", json={"enabled": True, "max_per_day": 1000}, headers=ADMIN)
    x_train, _, y_train, _ = split()
    images = shifted(x_train[:samples])
    body = sample_body("cam-1", [model_input(i) for i in images], model=MODEL)
    answer = client.post(
        "/v1/device/samples", json=body, headers={"Authorization": f"Bearer {device['device_token']}"}
    )
    assert answer.json()["accepted"] == samples, answer.text
    labels = [
        {"sample_id": s["sample_id"], "label": label(int(y))}
        for s, y in zip(body["samples"], y_train, strict=False)
    ]
    assert (
        client.post(f"/api/v1/models/{MODEL}/labels", json={"labels": labels}, headers=ADMIN).status_code
        == 200
    )
    assert (
        client.put(f"/api/v1/models/{MODEL}/retraining-policy", json=policy, headers=ADMIN).status_code == 200
    )


@pytest.fixture
def digits_registry(tmp_path, digits_v1):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    app = create_app(retraining_settings(tmp_path / "registry", digits_v1.public_key, digits_v1.signing_key))
    with TestClient(app) as client:
        yield client, app.state.registry


def run_jobs(registry, client, job_id: int, timeout: float = 300) -> dict:  # type: ignore[no-untyped-def]
    """Tick the retraining loop by hand until the job ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        registry.jobs.tick()
        job = client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']} ({job['phase']}) after {timeout} s")


def test_a_candidate_worse_than_its_parent_is_registered_and_rejected_with_the_figures(
    digits_registry, digits_v1
):
    client, registry = digits_registry
    prepare(client, digits_v1, command_policy("scramble"))
    queued = client.post(
        f"/api/v1/models/{MODEL}/retrain", json={"reason": "a bad model"}, headers=ADMIN
    ).json()
    job = run_jobs(registry, client, queued["id"])
    assert job["state"] == "rejected", job
    figures = job["evaluation"]["cpu"]
    assert figures["metric"] == "top1" and figures["samples"] == job["dataset"]["holdout_samples"] >= 5
    assert figures["candidate"] < figures["parent"]
    assert job["reason"].startswith("rejected: worse than its parent") and "cpu: top1" in job["reason"]
    assert job["rollout_id"] is None and job["outcome"]["ok"] is True
    assert job["dataset"]["train_samples"] + job["dataset"]["holdout_samples"] == 60
    version = client.get(f"/api/v1/models/{MODEL}/versions/2", headers=ADMIN).json()
    lineage = version["lineage"]
    assert lineage["parent_version"] == 1 and lineage["trigger"] == f"retrain job {job['id']}: manual"
    assert lineage["training_data"] == "sklearn:digits"  # the parent's, carried over
    assert lineage["data_snapshots"]["feedback-1-train"] == job["dataset"]["train_sha256"]
    assert lineage["data_snapshots"]["feedback-1-holdout"] == job["dataset"]["holdout_sha256"]
    assert {"calib", "val"} <= set(lineage["data_snapshots"])  # what the build itself used, signed
    assert [a["target"] for a in version["artifacts"]] == ["cpu"] and version["artifacts"][0][
        "precision"
    ] == "int8"
    assert registry.store.exists(lineage["source_sha256"])  # the next job's parent weights
    log = client.get(f"/api/v1/jobs/{job['id']}/log", headers=ADMIN).text
    assert "scramble: job" in log and "retrain evaluate" in log


def test_a_failing_entry_point_fails_the_job_with_its_error_line(digits_registry, digits_v1):
    client, registry = digits_registry
    failing = command_policy("copy")
    failing["entry_point"]["command"] = [
        sys.executable,
        "-c",
        "import sys; print('error: the labeled data is corrupt', file=sys.stderr); sys.exit(3)",
    ]
    prepare(client, digits_v1, failing)
    queued = client.post(f"/api/v1/models/{MODEL}/retrain", json={}, headers=ADMIN).json()
    job = run_jobs(registry, client, queued["id"])
    assert job["state"] == "failed" and job["phase"] == "training"
    assert "failed (exit 3): the labeled data is corrupt" in job["reason"]
    assert client.get(f"/api/v1/models/{MODEL}/versions/2", headers=ADMIN).status_code == 404


def test_a_failed_job_is_a_webhook_event(tmp_path, digits_v1):
    """The job's end reaches a real receiver on loopback as a signed `job.failed` event."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app
    from tests.cloud_registry.test_webhooks import SECRET, Receiver

    receiver = Receiver().start()
    settings = retraining_settings(
        tmp_path / "registry",
        digits_v1.public_key,
        digits_v1.signing_key,
        webhook_urls=[receiver.url],
        webhook_secret=SECRET,
    )
    failing = command_policy("copy")
    failing["entry_point"]["command"] = [sys.executable, "-c", "import sys; sys.exit('error: no GPU')"]
    try:
        with TestClient(create_app(settings)) as client:
            prepare(client, digits_v1, failing)
            queued = client.post(f"/api/v1/models/{MODEL}/retrain", json={}, headers=ADMIN).json()
            job = run_jobs(client.app.state.registry, client, queued["id"])
            assert job["state"] == "failed"
            wait_for(lambda: receiver.bodies, "the job's webhook")
    finally:
        receiver.stop()
    assert receiver.bad_signatures == 0 and receiver.events() == ["job.failed"]
    event = receiver.bodies[0]
    assert event["data"]["job"] == job["id"] and event["data"]["model"] == MODEL
    assert event["text"].startswith(f"Retraining job {job['id']} of {MODEL} failed:")
    assert "no GPU" in event["data"]["reason"]


def test_a_job_without_its_parents_weights_cannot_start(tmp_path, digits_v1):
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    app = create_app(retraining_settings(tmp_path / "registry", digits_v1.public_key, digits_v1.signing_key))
    with TestClient(app) as client:
        prepare(client, digits_v1, command_policy("copy"))
        registry = app.state.registry
        with registry.factory() as session:  # as if v1's source had never been uploaded
            from cloud_registry import crud

            source = crud.get_version(session, model=MODEL, version=1).source_sha256
        registry.store.delete(source)
        queued = client.post(f"/api/v1/models/{MODEL}/retrain", json={}, headers=ADMIN).json()
        job = run_jobs(registry, client, queued["id"], timeout=60)
    assert job["state"] == "failed"
    assert (
        "cannot start" in job["reason"] and f"edgectl retrain source {MODEL} 1 digits_cnn.pt" in job["reason"]
    )


# --------------------------------------------------------------------------- a registry killed mid-job


class RegistryProcess:
    """`edgectl registry serve` in its own process, on a data folder that outlives it."""

    def __init__(self, root: Path, digits_v1, port: int) -> None:  # type: ignore[no-untyped-def]
        self.root, self.port, self.url = root, port, f"http://127.0.0.1:{port}"
        self.env = {
            **subprocess_env(),
            "EDGECTL_REGISTRY_DATA_DIR": str(root / "registry"),
            "EDGECTL_REGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
            "EDGECTL_REGISTRY_TRUSTED_KEYS": str(digits_v1.public_key),
            "EDGECTL_REGISTRY_JOBS_SIGN_KEY": str(digits_v1.signing_key),
            "EDGECTL_REGISTRY_EDGECTL_COMMAND": " ".join(EDGECTL),
            "EDGECTL_REGISTRY_RETRAIN_INTERVAL_S": "0.5",
            "EDGECTL_REGISTRY_JOBS_LEASE_S": "3",
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> RegistryProcess:
        log = open(self.root / f"registry-{self.port}.log", "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            [*EDGECTL, "registry", "serve", "--port", str(self.port), "--log-level", "info"],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.root,
        )
        wait_for(lambda: _up(self.url), "the registry process", 60)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _up(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    return False


def test_a_registry_killed_mid_job_neither_loses_nor_duplicates_it(tmp_path, digits_v1):
    first = RegistryProcess(tmp_path, digits_v1, free_port()).start()
    second = None
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            policy = command_policy("nudge", sleep=6)  # not the parent's own file: that is refused
            policy["evaluation"]["tolerance_points"] = 100  # this test is about the restart, not the model
            prepare(client, digits_v1, policy)
            job_id = client.post(f"/api/v1/models/{MODEL}/retrain", json={}, headers=ADMIN).json()["id"]
            wait_for(
                lambda: client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN).json()["phase"] == "training",
                "the first attempt to train",
                60,
            )
        first.kill()  # SIGKILL: no clean stop, the lease is left to expire
        attempt_one = tmp_path / "registry" / "jobs" / f"job-{job_id}" / "attempt-1"
        assert attempt_one.is_dir()
        second = RegistryProcess(tmp_path, digits_v1, free_port()).start()
        with httpx.Client(base_url=second.url, timeout=30) as client:

            def finished() -> dict | None:
                job = client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN).json()
                return job if job["state"] not in ("queued", "running") else None

            job = wait_for(finished, "the job to finish on the restarted registry", 300)
            assert job["state"] == "succeeded", job
            assert job["attempt"] == 2 and job["new_version"] == 2
            assert "lost its registry" not in (job["reason"] or "")  # the reason is the outcome's now
            assert job["evaluation"]["cpu"]["samples"] == job["dataset"]["holdout_samples"]
            assert job["rollout_id"] is not None and "canary rollout" in job["reason"]
            assert len(client.get("/api/v1/rollouts", headers=ADMIN).json()) == 1
            jobs = client.get("/api/v1/jobs", headers=ADMIN).json()
            assert [j["id"] for j in jobs] == [job_id]  # one job, not two
            model = client.get(f"/api/v1/models/{MODEL}", headers=ADMIN).json()
            assert [v["version"] for v in model["version_list"]] == [1, 2]  # one new version
            # The orphaned first attempt may finish meanwhile; its outcome is never taken.
            wait_for(lambda: (attempt_one / "outcome.json").exists(), "the orphaned attempt to end", 120)
            time.sleep(1.5)
            assert client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN).json()["attempt"] == 2
            assert [
                v["version"]
                for v in client.get(f"/api/v1/models/{MODEL}", headers=ADMIN).json()["version_list"]
            ] == [1, 2]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for folder in (tmp_path / "registry" / "jobs").glob("job-*/attempt-*"):
            pid_file = folder / "worker.pid"
            if pid_file.exists():  # an orphaned worker of the killed registry: stop it by its own id
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def test_outcomes_of_stale_attempts_are_dropped(digits_registry, digits_v1):
    """Unit view of the same guarantee: an outcome is taken only for the attempt the job runs now."""
    from cloud_registry.jobs.runners import Finished

    client, registry = digits_registry
    prepare(client, digits_v1, command_policy("copy"))
    job_id = client.post(f"/api/v1/models/{MODEL}/retrain", json={}, headers=ADMIN).json()["id"]
    manager = registry.jobs
    now = time.time()
    assert manager.claim(job_id, now) == 1
    manager.requeue_lost(now + 10_000)  # as if this replica had died
    assert manager.claim(job_id, now + 10_001) == 2
    outcome = {"ok": True, "phase": "done", "bundles": {}, "evaluation": {}}
    manager.finalize(Finished(job_id, 1, outcome))
    job = client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN).json()
    assert job["state"] == "running" and job["attempt"] == 2 and job["outcome"] == {}


def test_the_registry_and_the_job_worker_never_import_the_toolchain():
    """They run training, `edgectl build` and `edgectl retrain evaluate` as child processes instead."""
    code = (
        "import sys\n"
        "import cloud_registry.main, cloud_registry.jobs.manager, cloud_registry.jobs.worker\n"
        "import cloud_registry.jobs.runners, cloud_registry.jobs.entry, cloud_registry.retraining\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('toolchain', 'torch', 'onnxruntime'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
