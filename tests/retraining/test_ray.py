"""The Ray job runner against a real local Ray instance that the test starts (`ray start --head`): the
reference digits fine-tune runs as a Ray task and its candidate becomes version 2."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.retraining.conftest import retraining_settings
from tests.retraining.digits import subprocess_env
from tests.retraining.test_jobs import ADMIN, MODEL, prepare, run_jobs
from tests.services import free_port, wait_for_port

pytest.importorskip("ray", reason="the Ray runner's test needs `pip install ray` (the dev extra has it)")


@pytest.fixture
def ray_cluster():  # type: ignore[no-untyped-def]
    """A one-node Ray cluster in its own process group (stopped by that group's id, nothing else)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    ray = Path(sys.executable).with_name("ray")
    process = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--block",
        ],
        env=subprocess_env(),
        stdout=open(temp / "ray.log", "wb"),  # noqa: SIM115 (lives with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_retraining_job_runs_as_a_ray_task(tmp_path, digits_v1, ray_cluster):
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    settings = retraining_settings(
        tmp_path / "registry",
        digits_v1.public_key,
        digits_v1.signing_key,
        jobs_runner="ray",
        ray_address=ray_cluster,
    )
    app = create_app(settings)
    policy = {
        "entry_point": {
            "callable": "toolchain.finetune_digits:finetune",
            "params": {"epochs": 4, "threads": 1},
        },
        "training_data": "sklearn:digits",
        "groups": ["field"],
        "min_labeled_samples": 20,
        "evaluation": {"min_holdout": 5},
        "build": {"extra_args": ["--bench-runs", "3", "--allow-slower-int8"]},
        "rollout": {"enabled": False},
    }
    with TestClient(app) as client:
        registry = app.state.registry
        assert registry.jobs.runner.name == "ray"
        prepare(client, digits_v1, policy, samples=120)
        queued = client.post(
            f"/api/v1/models/{MODEL}/retrain", json={"reason": "on ray"}, headers=ADMIN
        ).json()
        job = run_jobs(registry, client, queued["id"], timeout=400)
        assert job["runner"] == "ray" and job["attempt"] == 1
        assert job["state"] == "succeeded", job
        figures = job["evaluation"]["cpu"]
        assert figures["candidate"] >= figures["parent"]
        assert job["outcome"]["metrics"]["new_samples"] == job["dataset"]["train_samples"]
        workdir = Path(job["outcome"]["bundles"]["cpu"]).parents[1]
        assert not (workdir / "worker.pid").exists()  # no local worker process: Ray ran it
        assert "fine-tuning v1" in client.get(f"/api/v1/jobs/{job['id']}/log", headers=ADMIN).text
        version = client.get(f"/api/v1/models/{MODEL}/versions/2", headers=ADMIN).json()
        assert version["lineage"]["parent_version"] == 1 and job["rollout_id"] is None
