"""Benchmark: wall time of a 4-wave rollout (1 %, 10 %, 50 %, 100 %) across a simulated fleet.

A real Mosquitto and the registry with its reconciler thread. The fleet is
simulated by one MQTT client that stands in for every device: it receives each
device's retained desired state, waits an install time (uniform in
[--install-min, --install-max] seconds, as a device downloads, verifies and
health-checks), then publishes that device's SUCCEEDED update status and a
telemetry message on the new version, on the device's own topics. Gates are
live (p95, errors, confidence) but the simulated devices stay healthy, so the
rollout completes; the time is from the create call to the `completed`
decision, and per wave from its start to its completion.

Writes benchmarks/results/registry_rollout.{json,md}.

    .venv/bin/python benchmarks/registry_rollout.py [--devices 1000] [--bake 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class SimulatedFleet:
    """Every device of the fleet behind one MQTT connection (the broker runs without ACLs here)."""

    def __init__(self, port: int, install_range: tuple[float, float], seed: int = 1) -> None:
        import paho.mqtt.client as mqtt

        self.install_range = install_range
        self.random = random.Random(seed)
        self.seq: dict[str, int] = {}
        self.lock = threading.Lock()
        self.timers: list[threading.Timer] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="bench-fleet", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(200)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edgectl/cmd/default/+/desired", qos=1)
        self.client.loop_start()

    def _next(self, device: str) -> int:
        with self.lock:
            self.seq[device] = self.seq.get(device, 0) + 1
            return self.seq[device]

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if not message.payload:
            return
        desired = json.loads(message.payload)
        device = message.topic.split("/")[3]
        delay = self.random.uniform(*self.install_range)
        timer = threading.Timer(delay, self._installed, args=(device, desired))
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def _installed(self, device: str, desired: dict) -> None:
        from edgewire.messages import dump_payload
        from edgewire.topics import Topics
        from tests.cloud_registry.helpers import telemetry, update_status

        topics = Topics("default", device)
        status = update_status(
            device,
            self._next(device),
            update_id=desired["update_id"],
            state="SUCCEEDED",
            to_version=desired["version"],
            from_version=desired["version"] - 1,
            rollout_id=desired["rollout_id"],
        )
        self.client.publish(topics.update, dump_payload(status), qos=1)
        sample = telemetry(
            device, self._next(device), version=desired["version"], p95=10.0, confidence=[1] * 10
        )
        self.client.publish(topics.telemetry, dump_payload(sample), qos=1)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.client.disconnect()
        self.client.loop_stop()


def run(
    devices: int, bake_s: float, install_range: tuple[float, float], interval_s: float, work: Path
) -> dict:
    from sqlalchemy import select

    from cloud_registry import models as m
    from cloud_registry import rollouts as engine
    from cloud_registry.core.config import Settings
    from cloud_registry.schemas import RolloutCreate
    from cloud_registry.service import Registry
    from edgebundle import generate_keypair, load_private_key
    from tests.cloud_registry.helpers import make_bundle, telemetry
    from tests.services import Mosquitto

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from registry_ingest import enroll_fleet

    private, public = generate_keypair(work / "keys")
    broker = Mosquitto(work / "broker", persistence=False).start()
    registry = Registry(
        Settings(
            data_dir=work / "registry",
            trusted_keys=[public],
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            mqtt_client_id="bench-registry",
            reconcile_interval_s=interval_s,
        )
    )
    registry.start()
    fleet = None
    try:
        assert registry.link.subscribed.wait(20)
        from cloud_registry import crud
        from edgebundle import read_manifest, sha256_file

        for version in (1, 2):
            archive = make_bundle(work, load_private_key(private), version=version)
            sha = sha256_file(archive)
            registry.store.put(sha, archive)
            with registry.factory() as session, session.begin():
                crud.register_artifact(
                    session,
                    manifest=read_manifest(archive),
                    archive_sha256=sha,
                    archive_size=archive.stat().st_size,
                    uploaded_by="bench",
                )
        names = enroll_fleet(registry, devices)
        with registry.factory() as session, session.begin():  # every device serves v1, with a baseline
            from cloud_registry.ingest import apply_messages

            apply_messages(
                session, [telemetry(n, 1, version=1, p95=10.0, confidence=[1] * 10) for n in names]
            )
        fleet = SimulatedFleet(broker.port, install_range)
        body = RolloutCreate(
            model="digits",
            version=2,
            waves=[1, 10, 50, 100],
            policy={"bake_s": bake_s, "wave_timeout_s": 600, "success_threshold": 1.0},
        )
        started = time.perf_counter()
        started_wall = time.time()
        with registry.factory() as session, session.begin():
            rollout, publications = engine.create_rollout(session, body=body, actor="bench", public_url="")
            rollout_id = rollout.id
        registry.publish(publications)
        state = "running"
        deadline = time.monotonic() + 900
        while state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
            with registry.factory() as session:
                state = session.scalar(select(m.Rollout.state).where(m.Rollout.id == rollout_id))
        elapsed = time.perf_counter() - started
        with registry.factory() as session:
            waves = session.scalars(
                select(m.RolloutWave)
                .where(m.RolloutWave.rollout_id == rollout_id)
                .order_by(m.RolloutWave.index)
            ).all()
            wave_rows = [
                {
                    "wave": w.index + 1,
                    "percent": w.percent,
                    "devices": w.size,
                    "seconds": round((w.completed_at or time.time()) - (w.started_at or started_wall), 3),
                }
                for w in waves
            ]
            touched = session.scalar(
                select(m.RolloutDevice.id)
                .where(m.RolloutDevice.rollout_id == rollout_id, m.RolloutDevice.state == "pending")
                .limit(1)
            )
    finally:
        if fleet is not None:
            fleet.close()
        registry.stop()
        broker.stop()
    return {
        "devices": devices,
        "waves": "1,10,50,100",
        "bake_s": bake_s,
        "install_s": list(install_range),
        "reconcile_interval_s": interval_s,
        "state": state,
        "seconds": round(elapsed, 3),
        "per_wave": wave_rows,
        "all_devices_updated": touched is None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--bake", type=float, default=0.0, help="Seconds each wave stays healthy before the next."
    )
    parser.add_argument("--install-min", type=float, default=0.2)
    parser.add_argument("--install-max", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.5, help="Reconciler interval, seconds.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        result = run(args.devices, args.bake, (args.install_min, args.install_max), args.interval, Path(tmp))
    print(json.dumps(result))
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry_rollout.json").write_text(
        json.dumps({"host": host, "result": result}, indent=2) + "\n"
    )
    lines = [
        "# A 4-wave rollout across a simulated fleet",
        "",
        f"{result['devices']} simulated devices (one MQTT connection for all), real Mosquitto, SQLite; install "
        f"time per device uniform in {result['install_s']} s; reconciler every {result['reconcile_interval_s']} s; "
        f"bake {result['bake_s']} s; host: {host['cpus']} CPUs, {host['machine']}, Python {host['python']}.",
        "",
        f"Rollout {result['state']} in **{result['seconds']} s**; every device updated: {result['all_devices_updated']}.",
        "",
        "| wave | percent | devices | seconds |",
        "|---|---|---|---|",
        *[
            f"| {w['wave']} | {w['percent']:g}% | {w['devices']} | {w['seconds']} |"
            for w in result["per_wave"]
        ],
    ]
    (args.out / "registry_rollout.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
