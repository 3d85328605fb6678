"""Fleet observability end to end: a real Prometheus (Debian's binary, the shipped scrape config and alert
rules) scrapes a real registry (uvicorn, real Mosquitto) with a read-only token and two real
`edgectl-agent` processes. Through Prometheus' HTTP API: the fleet's gauges after a completed rollout,
the halted rollout's gauge and its firing alert after a failed one, the drift gauge above its policy's
threshold after a drift event; then every panel query of the shipped Grafana dashboard runs without an
error."""

from __future__ import annotations

import json
import math
import time

import httpx
import yaml  # noqa: F401  (the shipped config is YAML: tests.deploy.prometheus reads it)

from cloud_registry import db, drift
from edgewire.messages import InferenceStats, ModelRef, Telemetry, new_message_id
from tests.cloud_registry.conftest import ADMIN_TOKEN
from tests.cloud_registry.helpers import make_bundle
from tests.cloud_registry.test_e2e_fleet import stack  # noqa: F401  (the fixture)
from tests.deploy.prometheus import DEPLOY, Prometheus, shipped_config
from tests.device_agent.bundles import classifier_bundle
from tests.retraining.test_drift_and_triggers import REFERENCE, SHIFTED

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _values(result: list[dict]) -> dict[tuple, float]:
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


def _drift_event(url: str, tmp_path, signing) -> None:  # type: ignore[no-untyped-def]
    """A model with a drift reference, a policy watching group 'field', and a device there whose inputs
    have shifted: the registry scores it above the threshold."""
    archive = make_bundle(tmp_path / "digits", signing[0], drift_reference=REFERENCE)
    pushed = httpx.post(
        f"{url}/api/v1/bundles",
        content=archive.read_bytes(),
        headers={**ADMIN, "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert pushed.status_code == 201, pushed.text
    policy = {
        "entry_point": {"callable": "toolchain.finetune_digits:finetune"},
        "groups": ["field"],
        "triggers": {"drift": {"threshold": 0.25, "sustained_s": 3600}},
    }
    put = httpx.put(f"{url}/api/v1/models/digits/retraining-policy", json=policy, headers=ADMIN, timeout=30)
    assert put.status_code == 200, put.text
    token = httpx.post(f"{url}/api/v1/enrollment-tokens", json={"group": "field"}, headers=ADMIN).json()
    device = httpx.post(f"{url}/v1/enroll", json={"token": token["token"], "name": "cam-1", "target": "cpu"})
    headers = {"Authorization": f"Bearer {device.json()['device_token']}", "Content-Type": "application/json"}
    for seq in range(3):
        message = Telemetry(
            fleet="default",
            device="cam-1",
            msg_id=new_message_id(),
            seq=seq,
            sent_at=time.time(),
            interval_s=1,
            model=ModelRef(name="digits", version=1, slot="a"),
            inference=InferenceStats(count=SHIFTED.samples, errors=0),
            drift=SHIFTED,
        )
        sent = httpx.post(f"{url}/v1/device/telemetry", content=message.model_dump_json(), headers=headers)
        assert sent.status_code == 204, sent.text


def test_prometheus_scrapes_the_registry_and_agents_through_a_rollout_and_drift(stack, signing, tmp_path):  # noqa: F811
    for version, health_version in ((1, None), (2, 1)):  # v2 fails the device's health check
        built = classifier_bundle(
            tmp_path / f"v{version}", signing[0], version, health_version=health_version
        )
        assert stack.cli("push", built.archive, "--json").code == 0
    agents = stack.start_agents(2)
    token = httpx.post(
        f"{stack.url}/api/v1/tokens", json={"name": "prometheus", "role": "read-only"}, headers=ADMIN
    ).json()["token"]
    root = tmp_path / "prometheus"
    root.mkdir()
    config = shipped_config(
        root,
        registry=stack.url.removeprefix("http://"),
        token=token,
        agents=[f"127.0.0.1:{a.http_port}" for a in agents],
    )
    prometheus = Prometheus(root, config).start()
    try:
        prometheus.wait('count(up{job="edgectl-agent"} == 1) == 2', "both agents scraped")
        prometheus.wait('up{job="edgectl-registry"} == 1', "the registry scraped with the read-only token")

        done = stack.roll_out(1, "--waves", "50,100", "--bake", "1", "--wave-timeout", "300")
        assert done["state"] == "completed", done
        rid = str(done["id"])
        prometheus.wait(
            f'edgectl_registry_rollout_info{{rollout="{rid}",state="completed"}}', "the completed rollout"
        )
        prometheus.wait('edgectl_registry_devices{presence="online"} == 2', "two devices online")
        on_v1 = prometheus.wait(
            'edgectl_registry_devices_by_version{model="tiny",version="1"} == 2', "both devices on v1"
        )
        assert len(on_v1) == 1
        served = prometheus.wait(
            'count(edgectl_agent_model_info{name="tiny",version="1"}) == 2', "agents on v1"
        )
        assert served
        touched = _values(prometheus.query(f'edgectl_registry_rollout_devices{{rollout="{rid}"}}'))
        assert {dict(k)["outcome"]: v for k, v in touched.items()} == {"succeeded": 2}

        halted = stack.roll_out(2, "--waves", "50,100", "--bake", "1", "--wave-timeout", "300")
        assert halted["state"] == "halted" and "failure_rate" in halted["reason"], halted
        hid = str(halted["id"])
        prometheus.wait(
            f'edgectl_registry_rollout_halted{{rollout="{hid}",reason="failure_rate"}} == 1', "halt"
        )
        alert = prometheus.wait(
            f'ALERTS{{alertname="EdgectlRolloutHalted",alertstate="firing",rollout="{hid}"}}',
            "the alert firing",
        )
        assert alert[0]["metric"]["severity"] == "page"

        _drift_event(stack.url, tmp_path, signing)
        with db.transaction(stack.registry.factory) as session:
            assert drift.score_fleet(session, window_s=60, interval_s=1.0, now=math.floor(time.time()) + 1.01)
        above = prometheus.wait(
            "edgectl_registry_drift_score > on (model, version, group) edgectl_registry_drift_threshold",
            "drift above the policy",
        )
        assert [(r["metric"]["model"], r["metric"]["group"]) for r in above] == [("digits", "field")]
        assert float(above[0]["value"][1]) > 1.0  # psi_confidence of the shifted inputs

        # Every panel of the shipped Grafana dashboard, as Grafana would ask (a range query).
        dashboard = json.loads((DEPLOY / "grafana" / "edgectl-fleet.json").read_text())
        now = time.time()
        empty = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "15s")
                data = prometheus.api("query_range", query=expr, start=str(now - 120), end=str(now), step="2")
                if not data["result"]:
                    empty.append(panel["title"])
        # Queries with nothing to show on this fleet: no poison, no lag, no job, no webhook configured.
        assert set(empty) <= {"Poison messages (10 min)", "Write errors"}, empty
    finally:
        prometheus.stop()
