"""Benchmark: telemetry messages ingested per second from many simulated devices through a real broker.

A real Mosquitto on a loopback port, the registry's own MQTT link and ingest
writer (batches, duplicate check, manual acks), and simulated devices that
publish edgewire Telemetry at QoS 1 on their own topics. "Ingested" means
committed to the database; the rate is messages over the time from the first
publish to the last commit. Runs once on SQLite and once on PostgreSQL (a
throw-away server) when its binaries are present.

Writes benchmarks/results/registry_ingest.{json,md}.

    .venv/bin/python benchmarks/registry_ingest.py [--devices 200] [--messages 50] [--publishers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def enroll_fleet(registry, devices: int) -> list[str]:
    from tests.cloud_registry.mqtt_sim import enroll_devices

    return enroll_devices(registry, [f"sim-{i:05d}" for i in range(devices)], created_by="bench")


def stored(registry) -> int:
    from sqlalchemy import func, select

    from cloud_registry import models as m

    with registry.factory() as session:
        return session.scalar(select(func.count()).select_from(m.TelemetryRecord)) or 0


def publish_all(port: int, names: list[str], messages: int, publishers: int) -> float:
    """Each publisher thread owns one MQTT connection and a slice of the devices; returns the first publish time."""
    import paho.mqtt.client as mqtt

    from edgewire.messages import dump_payload
    from edgewire.topics import Topics
    from tests.cloud_registry.helpers import telemetry

    payloads: list[list[tuple[str, bytes]]] = [[] for _ in range(publishers)]
    for index, name in enumerate(names):
        topic = Topics("default", name).telemetry
        for seq in range(1, messages + 1):
            payloads[index % publishers].append(
                (topic, dump_payload(telemetry(name, seq, confidence=[1] * 10)))
            )
    clients = []
    for i in range(publishers):
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}", protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        clients.append(client)
    started = time.perf_counter()

    def run(client, items) -> None:  # type: ignore[no-untyped-def]
        infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(120)

    threads = [threading.Thread(target=run, args=(c, p)) for c, p in zip(clients, payloads, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.disconnect()
        client.loop_stop()
    return started


def run_case(
    backend: str, database_url: str, devices: int, messages: int, publishers: int, work: Path
) -> dict:
    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry
    from tests.services import Mosquitto

    broker = Mosquitto(work / f"broker-{backend}", persistence=False).start()
    registry = Registry(
        Settings(
            data_dir=work / f"registry-{backend}",
            database_url=database_url,
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            mqtt_client_id=f"bench-registry-{backend}",
            reconcile_interval_s=3600,
        )
    )
    registry.start()
    try:
        assert registry.link.subscribed.wait(20)
        names = enroll_fleet(registry, devices)
        total = devices * messages
        started = publish_all(broker.port, names, messages, publishers)
        published = time.perf_counter()
        deadline = time.monotonic() + 600
        while stored(registry) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        done = time.perf_counter()
        count = stored(registry)
        stats = registry.ingest.stats.as_dict()
    finally:
        registry.stop()
        broker.stop()
    return {
        "backend": backend,
        "devices": devices,
        "messages_per_device": messages,
        "publishers": publishers,
        "messages": total,
        "stored": count,
        "publish_s": round(published - started, 3),
        "ingest_s": round(done - started, 3),
        "ingested_per_s": round(count / (done - started), 1),
        "batches": stats["batches"],
        "mean_batch": round(stats["received"] / max(1, stats["batches"]), 1),
        "duplicates": stats["duplicates"],
        "dropped": stats["dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50, help="Telemetry messages per device.")
    parser.add_argument("--publishers", type=int, default=4, help="MQTT connections the devices share.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    from tests.services import Postgres

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        rows.append(run_case("sqlite", "", args.devices, args.messages, args.publishers, work))
        print(json.dumps(rows[-1]))
        if not args.skip_postgres:
            server = Postgres().start()
            try:
                rows.append(
                    run_case(
                        "postgresql", server.database(), args.devices, args.messages, args.publishers, work
                    )
                )
                print(json.dumps(rows[-1]))
            finally:
                server.stop()
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry_ingest.json").write_text(
        json.dumps({"host": host, "results": rows}, indent=2) + "\n"
    )
    lines = [
        "# Registry telemetry ingest",
        "",
        f"Real Mosquitto, QoS 1, {args.devices} simulated devices x {args.messages} messages over "
        f"{args.publishers} MQTT connections; host: {host['cpus']} CPUs, {host['machine']}, Python {host['python']} "
        "(broker, registry and publishers share the machine).",
        "",
        "| database | messages | stored | publish s | ingest s | ingested / s | batches | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['messages']} | {r['stored']} | {r['publish_s']} | {r['ingest_s']} | "
            f"{r['ingested_per_s']} | {r['batches']} | {r['mean_batch']} |"
        )
    (args.out / "registry_ingest.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
