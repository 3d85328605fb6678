"""The retraining loop end to end, with a real Mosquitto (password file and ACL from the registry), the
registry served over HTTP with its retraining loop running on its own, and two real `edgectl-agent`
processes serving the digits CNN, driven only through the CLI and the agents' HTTP APIs:

1. v1 (trained on upright scikit-learn digits, `sklearn:digits` lineage) is pushed with its source and
   rolled out to both agents of group `field`; sample upload is switched on for the group and the
   retraining policy set (the reference fine-tune, a drift trigger, a canary rollout);
2. the devices see ordinary digits: the fleet's drift score stays low;
3. then rotated, thick-stroked digits: the score rises above the threshold and stays there, while the
   agents upload the inputs their model was least sure about; a labeler exports them, labels them from
   what it knows of each image, and uploads the label file;
4. the drift trigger queues a job; the local runner fine-tunes v1 on the labeled samples (plus a replay of
   the original digits), builds v2 for `cpu` with `edgectl build`, and compares both on the held-out
   samples; v2 is at least as good, so its canary rollout starts and one agent installs v2;
5. on digits of the same shift that no one uploaded or labeled, the canary agent running v2 is far more
   accurate than the agent still on v1.

Measured figures go to build/test-artifacts/retraining/e2e.json.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.cli import run
from tests.cloud_registry.conftest import ADMIN_TOKEN, secured_fleet
from tests.cloud_registry.test_e2e_fleet import Agent, InferenceLoad
from tests.device_agent.harness import wait_for
from tests.retraining.conftest import EDGECTL
from tests.retraining.digits import input_key, png, shifted, split

MODEL = "digits-cnn"
DRIFT_THRESHOLD = 0.5
MIN_SAMPLES = 150


class FieldAgent(Agent):
    """An agent of the e2e fleet: polls the registry every second and summarizes every inference for drift."""

    def __init__(self, root: Path, name: str, registry_url: str, trusted: Path) -> None:
        super().__init__(root, name, registry_url, trusted)
        config = yaml.safe_load(self.config.read_text())
        config["registry"]["poll_interval_s"] = 1.0
        config["telemetry"]["drift_samples_per_s"] = None
        self.config.write_text(yaml.safe_dump(config))
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=20)

    def classify(self, image: np.ndarray) -> tuple[int, int]:
        """(predicted class, version that answered) for one 32x32 image sent as a PNG."""
        answer = self.http.post("/v1/infer", content=png(image), headers={"Content-Type": "image/png"})
        answer.raise_for_status()
        body = answer.json()
        return body["predictions"][0]["class_id"], body["model"]["version"]

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, set[int]]:
        answers = [self.classify(image) for image in images]
        top1 = 100.0 * float(np.mean([c == y for (c, _), y in zip(answers, labels, strict=True)]))
        return top1, {v for _, v in answers}


class Feeder(InferenceLoad):
    """The application on each device: sends images to its agent, round and round, until stopped."""

    def __init__(self, agents: list[FieldAgent], images: np.ndarray) -> None:
        super().__init__(agents)  # type: ignore[arg-type]
        self.images, self.sent = images, 0

    def _run(self, agent: FieldAgent) -> None:  # type: ignore[override]
        position = self.agents.index(agent)
        while not self.stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                agent.classify(self.images[position % len(self.images)])
                self.sent += 1
            position += len(self.agents)


@pytest.fixture
def fleet(tmp_path, digits_v1, capsys, monkeypatch):
    """Broker + registry (retraining loop every second, drift scored every second over 4 s of telemetry)."""
    with secured_fleet(
        tmp_path,
        digits_v1.public_key,
        mqtt_client_id="registry-retraining-e2e",
        reconcile_interval_s=0.5,
        presence_timeout_s=30,
        retrain_interval_s=1.0,
        drift_interval_s=1.0,
        drift_window_s=4.0,
        jobs_sign_key=digits_v1.signing_key,
        edgectl_command=EDGECTL,
    ) as (url, registry, broker):
        monkeypatch.setenv("EDGECTL_REGISTRY_URL", url)
        monkeypatch.setenv("EDGECTL_REGISTRY_TOKEN", ADMIN_TOKEN)
        monkeypatch.setenv(
            "OMP_NUM_THREADS", "1"
        )  # the job's training and builds share two cores with the fleet
        agents: list[FieldAgent] = []
        yield url, registry, broker, agents
        for agent in agents:
            agent.stop()


def test_drift_on_devices_becomes_a_retrained_version_in_canary_rollout(fleet, digits_v1, capsys, tmp_path):
    url, _registry, broker, agents = fleet
    started = time.monotonic()
    figures: dict = {}

    def cli(*args: object):  # type: ignore[no-untyped-def]
        result = run(capsys, *args)
        assert result.code == 0, (args, result.err)
        return result

    def logs() -> str:
        return "\n".join(a.tail() for a in agents) + "\n--- broker\n" + broker.log()[-2000:]

    # 1. v1 with its source; two agents in group `field`, on v1; sample upload on; the policy.
    cli("push", digits_v1.archive)
    cli("retrain", "source", MODEL, "1", digits_v1.model)
    for i in range(2):
        agent = FieldAgent(tmp_path / f"agent-{i}", f"field-{i}", url, digits_v1.public_key)
        agents.append(agent)
        agent.enroll(cli("devices", "enroll", "--group", "field", "--json").json()["token"])
        agent.start()
    wait_for(lambda: all(a.status() for a in agents), "the agents' HTTP APIs", on_timeout=logs)
    created = cli(
        "rollout", "create", MODEL, "--version", "1", "--waves", "100", "--bake", "0", "--json"
    ).json()
    wait_for(lambda: all(a.version() == 1 for a in agents), "both agents on v1", on_timeout=logs)
    wait_for(
        lambda: cli("rollout", "status", str(created["id"]), "--json").json()["state"] == "completed",
        "the v1 rollout to complete",
        on_timeout=lambda: cli("rollout", "status", str(created["id"]), "--json").out + "\n" + logs(),
    )
    cli(
        "retrain", "sampling", "field", "--enable", "--max-per-day", "150", "--max-confidence", "0.5",
        "--per-upload", "64", "--interval", "1",
    )  # fmt: skip
    policy = {
        "entry_point": {
            "callable": "toolchain.finetune_digits:finetune",
            "params": {"epochs": 5, "threads": 1, "replay": 300, "oversample": 2},
            "timeout_s": 600,
        },
        "groups": ["field"],
        "triggers": {"drift": {"threshold": DRIFT_THRESHOLD, "sustained_s": 3, "min_samples": MIN_SAMPLES}},
        "min_labeled_samples": 100,
        "evaluation": {"holdout_fraction": 0.3, "min_holdout": 20},
        "build": {"extra_args": ["--bench-runs", "3", "--allow-slower-int8"]},
        "rollout": {"waves": [50, 100], "gates": {"bake_s": 600, "max_p95_regression": 100}},
    }
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    cli("retrain", "policy", "set", MODEL, policy_file)
    figures["setup_s"] = round(time.monotonic() - started, 1)

    x_train, x_val, y_train, y_val = split()
    ordinary, field = x_train[600:1000], shifted(x_train[:600])
    truth = {  # the labeler's knowledge: every image it showed the devices, and its digit
        input_key(image.astype(np.float32)[None, None] / 255.0): int(y)
        for images, labels in ((ordinary, y_train[600:1000]), (field, y_train[:600]))
        for image, y in zip(images, labels, strict=True)
    }

    def drift_points() -> list[dict]:
        """The field group's scores that pool enough inferences to count (the trigger's min_samples)."""
        points = cli("retrain", "drift", MODEL, "--group", "field", "--limit", "1000", "--json").json()[
            "points"
        ]
        return [p for p in points if p["samples"] >= MIN_SAMPLES]

    # 2. Ordinary digits: the drift score stays low.
    with Feeder(agents, ordinary):
        wait_for(lambda: len(drift_points()) >= 4, "drift scores of the ordinary digits", 60, on_timeout=logs)
    calm = drift_points()
    figures["score_ordinary_max"] = round(max(p["score"] for p in calm), 4)
    figures["scores_ordinary"] = [(round(p["score"], 3), p["samples"]) for p in calm]
    assert figures["score_ordinary_max"] < DRIFT_THRESHOLD, figures
    assert cli("retrain", "jobs", "--json").json()["jobs"] == []

    # 3. Rotated, thick-stroked digits: the score rises and the agents upload what they are unsure of.
    drift_started = time.monotonic()
    with Feeder(agents, field) as feeder:
        wait_for(
            lambda: any(p["score"] > DRIFT_THRESHOLD for p in drift_points()[len(calm) :]),
            "the drift score to rise",
            90,
            on_timeout=logs,
        )
        figures["drift_detected_s"] = round(time.monotonic() - drift_started, 1)

        def uploaded() -> list[dict]:
            samples = cli("retrain", "samples", MODEL, "--unlabeled", "--json").json()["samples"]
            return samples if len(samples) >= 200 else []

        wait_for(uploaded, "200 uploaded samples", 120, on_timeout=logs)
        export = tmp_path / "to-label"
        cli("retrain", "samples", MODEL, "--unlabeled", "--export", export)
        rows = list(csv.DictReader((export / "labels.csv").read_text().splitlines()))
        for row in rows:  # the labeler knows each image it showed the devices
            row["label"] = str(truth[input_key(np.load(export / f"{row['sample_id']}.npy"))])
        with open(export / "labels.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        labeled = cli(
            "retrain", "label", MODEL, export / "labels.csv", "--source", "e2e-labeler", "--json"
        ).json()
        figures["labeled_samples"] = labeled["total_labeled"]
        confidences = [float(r["confidence"]) for r in rows]
        assert max(confidences) < 0.5  # only what the model was unsure of left the devices

        def queued() -> dict | None:
            jobs = cli("retrain", "jobs", "--model", MODEL, "--json").json()["jobs"]
            return jobs[0] if jobs else None

        job = wait_for(queued, "the drift trigger to queue a job", 60, on_timeout=logs)
        figures["inferences_sent"] = feeder.sent
    figures["trigger_s"] = round(time.monotonic() - drift_started, 1)
    assert job["trigger"] == "drift" and job["parent_version"] == 1
    assert job["trigger_details"]["group"] == "field" and job["trigger_details"]["value"] > DRIFT_THRESHOLD
    peak = drift_points()
    figures["score_drifted_max"] = round(max(p["score"] for p in peak), 4)
    figures["mean_shift_z_drifted_max"] = round(max(p["mean_shift_z"] for p in peak), 1)

    # 4. The job: fine-tune, build, held-out comparison, registration, canary rollout.
    job_started = time.monotonic()

    def finished() -> dict | None:
        info = cli("retrain", "job", str(job["id"]), "--json").json()
        return info if info["state"] not in ("queued", "running") else None

    done = wait_for(
        finished,
        "the retraining job",
        400,
        on_timeout=lambda: logs() + cli("retrain", "job", str(job["id"]), "--log").out,
    )
    figures["job_s"] = round(time.monotonic() - job_started, 1)
    figures["job_phases_s"] = done["outcome"].get("seconds")
    assert done["state"] == "succeeded", (done["reason"], done["outcome"].get("metrics"), done["dataset"])
    held_out = done["evaluation"]["cpu"]
    figures["held_out"] = held_out
    assert held_out["candidate"] >= held_out["parent"] + 20, held_out
    assert done["new_version"] == 2 and done["rollout_id"] is not None
    lineage = httpx.get(
        f"{url}/api/v1/models/{MODEL}/versions/2", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()["lineage"]
    assert lineage["parent_version"] == 1 and lineage["trigger"] == f"retrain job {job['id']}: drift"
    assert lineage["training_data"] == "sklearn:digits"
    assert lineage["data_snapshots"]["feedback-1-train"] == done["dataset"]["train_sha256"]

    rollout_id = str(done["rollout_id"])
    rollout = cli("rollout", "status", rollout_id, "--json").json()
    assert rollout["version"] == 2 and [w["size"] for w in rollout["waves"]] == [1, 1]
    assert rollout["decisions"][0]["actor"] == f"retraining-job-{job['id']}"
    wait_for(
        lambda: sum(a.version() == 2 for a in agents) == 1, "the canary agent on v2", 120, on_timeout=logs
    )
    canary = next(a for a in agents if a.version() == 2)
    other = next(a for a in agents if a is not canary)
    wait_for(
        lambda: cli("rollout", "status", rollout_id, "--json").json()["waves"][0]["succeeded"] == 1,
        "the canary's SUCCEEDED status",
        60,
    )
    rollout = cli("rollout", "status", rollout_id, "--json").json()
    assert rollout["state"] == "running" and rollout["current_wave"] == 0  # baking: the canary alone
    assert rollout["touched"] == 1 and other.version() == 1

    # 5. Shifted digits nobody uploaded or labeled (the validation split): v2 recovers the accuracy.
    test_x, test_y = shifted(x_val[:200]), y_val[:200]
    v2_top1, v2_versions = canary.accuracy(test_x, test_y)
    v1_top1, v1_versions = other.accuracy(test_x, test_y)
    v1_upright, _ = other.accuracy(x_val[:200], y_val[:200])
    figures |= {"v1_top1_upright": v1_upright, "v1_top1_shifted": v1_top1, "v2_top1_shifted": v2_top1}
    assert v2_versions == {2} and v1_versions == {1}
    assert v1_top1 <= v1_upright - 20, figures  # the drift hurt v1
    assert v2_top1 >= 80 and v2_top1 >= v1_top1 + 20, figures  # v2 recovered

    # The dashboard's model page shows the drift history and the job.
    page = httpx.get(f"{url}/ui/models/{MODEL}", cookies={"edgectl_token": ADMIN_TOKEN}).text
    assert "Drift of v1 field against its build reference" in page
    assert page.count('class="line reactive nofill"') >= 3  # pygal's score and two PSI lines
    assert (
        f'href="/ui/jobs/{job["id"]}"' in page
        and "succeeded" in page
        and f'href="/ui/rollouts/{rollout_id}"' in page
    )
    figures["total_s"] = round(time.monotonic() - started, 1)
    out = Path(
        os.environ.get("EDGECTL_TEST_ARTIFACTS")
        or Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
    )
    (out / "retraining").mkdir(parents=True, exist_ok=True)
    (out / "retraining" / "e2e.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert all(a.process.poll() is None for a in agents), logs()
