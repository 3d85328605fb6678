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

    .venv/bin/python benchmarks/registry_rollout.py [--devices 10000] [--bake 0] [--database postgresql]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
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
    """Every device of the fleet behind one MQTT connection (the broker runs without ACLs here).

    One scheduler thread holds every pending install in a heap (a timer thread per device does not
    scale to 10,000), and the times each device got its desired state and reported back are kept,
    so that the report can say where a wave's time went.
    """

    def __init__(self, port: int, install_range: tuple[float, float], seed: int = 1) -> None:
        import paho.mqtt.client as mqtt

        self.install_range = install_range
        self.random = random.Random(seed)
        self.seq: dict[str, int] = {}
        self.received_at: dict[str, float] = {}  # device -> when its (last) desired state came
        self.reported_at: dict[str, float] = {}  # device -> when it published SUCCEEDED
        self.pending: list[tuple[float, int, str, dict]] = []  # (due, arrival order, device, desired)
        self.arrivals = itertools.count()
        self.wake = threading.Condition()
        self.closed = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="bench-fleet", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edgectl/cmd/default/+/desired", qos=1)
        self.scheduler = threading.Thread(target=self._run, name="fleet-installs", daemon=True)
        self.scheduler.start()
        self.client.loop_start()

    def _next(self, device: str) -> int:
        self.seq[device] = self.seq.get(device, 0) + 1
        return self.seq[device]

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if not message.payload:
            return
        desired = json.loads(message.payload)
        device = message.topic.split("/")[3]
        now = time.time()
        with self.wake:
            self.received_at[device] = now
            due = now + self.random.uniform(*self.install_range)
            heapq.heappush(self.pending, (due, next(self.arrivals), device, desired))
            self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.closed and (not self.pending or self.pending[0][0] > time.time()):
                    self.wake.wait(None if not self.pending else max(0.0, self.pending[0][0] - time.time()))
                if self.closed:
                    return
                _, _, device, desired = heapq.heappop(self.pending)
            self._installed(device, desired)

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
        self.reported_at[device] = time.time()

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.client.disconnect()
        self.client.loop_stop()


def run(
    devices: int,
    bake_s: float,
    install_range: tuple[float, float],
    interval_s: float,
    work: Path,
    database_url: str = "",
) -> dict:
    from sqlalchemy import select

    from cloud_registry import models as m
    from cloud_registry import rollouts as engine
    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry
    from edgebundle import generate_keypair, load_private_key
    from registry_api.schemas import RolloutCreate
    from tests.cloud_registry.helpers import make_bundle, telemetry
    from tests.services import Mosquitto

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from registry_ingest import enroll_fleet

    private, public = generate_keypair(work / "keys")
    broker = Mosquitto(work / "broker", persistence=False).start()
    registry = Registry(
        Settings(
            data_dir=work / "registry",
            database_url=database_url,
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
            members = session.execute(
                select(m.RolloutDevice.wave, m.Device.name, m.RolloutDevice.finished_at)
                .join(m.Device, m.Device.id == m.RolloutDevice.device_id)
                .where(m.RolloutDevice.rollout_id == rollout_id)
            ).all()
            wave_rows = [_wave_row(w, members, fleet, started_wall) for w in waves]
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
        "database": "postgresql" if database_url else "sqlite",
        "waves": "1,10,50,100",
        "bake_s": bake_s,
        "install_s": list(install_range),
        "reconcile_interval_s": interval_s,
        "state": state,
        "seconds": round(elapsed, 3),
        "per_wave": wave_rows,
        "all_devices_updated": touched is None,
    }


def _wave_row(wave, members, fleet: SimulatedFleet, started_wall: float) -> dict:
    """A wave's time, split: the registry sending desired states, the devices installing (simulated),
    the registry recording their statuses, and the gates (with the reconciler's tick) deciding."""
    start = wave.started_at or started_wall
    end = wave.completed_at or time.time()
    names = [name for index, name, _ in members if index == wave.index]
    finished = [at for index, _, at in members if index == wave.index and at is not None]
    received = [fleet.received_at[n] for n in names if n in fleet.received_at]
    reported = [fleet.reported_at[n] for n in names if n in fleet.reported_at]

    def since_start(values: list[float]) -> float | None:
        return round(max(values) - start, 3) if values else None

    return {
        "wave": wave.index + 1,
        "percent": wave.percent,
        "devices": wave.size,
        "seconds": round(end - start, 3),
        "last_desired_received_s": since_start(received),
        "last_device_reported_s": since_start(reported),
        "last_status_recorded_s": since_start(finished),
        "decision_after_last_status_s": round(end - max(finished), 3) if finished else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument(
        "--bake", type=float, default=0.0, help="Seconds each wave stays healthy before the next."
    )
    parser.add_argument("--install-min", type=float, default=0.2)
    parser.add_argument("--install-max", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.5, help="Reconciler interval, seconds.")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from tests.services import Postgres

    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        server = Postgres().start() if args.database == "postgresql" else None
        try:
            result = run(
                args.devices, args.bake, (args.install_min, args.install_max), args.interval, Path(tmp),
                server.database() if server else "",
            )  # fmt: skip
        finally:
            if server is not None:
                server.stop()
    print(json.dumps(result))
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry_rollout.json").write_text(
        json.dumps({"host": host, "result": result}, indent=2) + "\n"
    )
    lines = [
        "# A 4-wave rollout across a simulated fleet",
        "",
        f"{result['devices']} simulated devices (one MQTT connection for all), real Mosquitto, "
        f"{'PostgreSQL' if result['database'] == 'postgresql' else 'SQLite'}; install "
        f"time per device uniform in {result['install_s']} s; reconciler every {result['reconcile_interval_s']} s; "
        f"bake {result['bake_s']} s; host: {host['cpus']} CPUs, {host['machine']}, Python {host['python']}.",
        "",
        f"Rollout {result['state']} in **{result['seconds']} s**; every device updated: {result['all_devices_updated']}.",
        "",
        "Where a wave's time goes, in seconds from the wave's start: the last device of the wave receiving its",
        "desired state (the registry's publishing), the last device reporting SUCCEEDED (after its simulated",
        "install), the registry recording the last status, and the gates deciding after it (bake, minimum",
        "evidence and the reconciler's tick).",
        "",
        "| wave | percent | devices | seconds | last desired received | last device reported "
        "| last status recorded | decision after last status |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {w['wave']} | {w['percent']:g}% | {w['devices']} | {w['seconds']} | {w['last_desired_received_s']} "
            f"| {w['last_device_reported_s']} | {w['last_status_recorded_s']} | {w['decision_after_last_status_s']} |"
            for w in result["per_wave"]
        ],
    ]
    (args.out / "registry_rollout.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
