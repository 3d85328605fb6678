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


def _publisher(port: int, index: int, names: list[str], messages: int, go, done) -> None:  # type: ignore[no-untyped-def]
    """One publisher process: one MQTT connection, its slice of the devices, every message at QoS 1."""
    sys.path.insert(0, str(ROOT))
    import paho.mqtt.client as mqtt

    from edgewire.messages import dump_payload
    from edgewire.topics import Topics
    from tests.cloud_registry.helpers import telemetry

    items = [
        (Topics("default", name).telemetry, dump_payload(telemetry(name, seq, confidence=[1] * 10)))
        for seq in range(1, messages + 1)
        for name in names
    ]
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.put(index)  # ready
    go.wait()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(300)
    client.disconnect()
    client.loop_stop()
    done.put(index)


def publish_all(port: int, names: list[str], messages: int, publishers: int) -> tuple[float, list]:
    """Publishers in processes of their own (not the registry's), each with a slice of the devices;
    returns the time of the go signal, once every one is connected and has its payloads ready."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    go, done = context.Event(), context.Queue()
    processes = [
        context.Process(target=_publisher, args=(port, i, names[i::publishers], messages, go, done))
        for i in range(publishers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        done.get(timeout=120)
    started = time.perf_counter()
    go.set()
    return started, processes


def _replica(settings: dict, ready, go, stop, results) -> None:  # type: ignore[no-untyped-def]
    """One registry replica in a process of its own; reports its ingest stats and CPU seconds from `go`."""
    sys.path.insert(0, str(ROOT))
    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry

    registry = Registry(Settings(**settings))
    registry.start()
    assert registry.link.subscribed.wait(60)
    ready.put(settings["mqtt_client_id"])
    go.wait()
    cpu = time.process_time()
    stop.wait()
    cpu = time.process_time() - cpu
    stats = registry.ingest.stats.as_dict()
    registry.stop()
    results.put({"replica": settings["mqtt_client_id"], "cpu_s": cpu, **stats})


def run_case(
    backend: str,
    database_url: str,
    devices: int,
    messages: int,
    publishers: int,
    work: Path,
    replicas: int = 1,
    writers: int = 1,
) -> dict:
    """Registry replicas (processes, one MQTT 5 shared subscription when several) and publisher processes."""
    import multiprocessing

    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry
    from tests.services import Mosquitto

    label = f"{backend}-x{replicas}-w{writers}"
    broker = Mosquitto(work / f"broker-{label}", persistence=False).start()
    common = {
        "data_dir": work / f"registry-{label}",
        "database_url": database_url,
        "reconcile_interval_s": 3600,
        "ingest_writers": writers,
    }
    setup = Registry(Settings(**common))  # migrates and enrolls; then only counts rows
    setup.start()
    context = multiprocessing.get_context("spawn")
    ready, go, stop, results = context.Queue(), context.Event(), context.Event(), context.Queue()
    processes = []
    try:
        names = enroll_fleet(setup, devices)
        for index in range(replicas):
            settings = {
                **common,
                "mqtt_host": "127.0.0.1",
                "mqtt_port": broker.port,
                "mqtt_client_id": f"bench-registry-{label}-{index}",
                "mqtt_share_group": "bench" if replicas > 1 else None,
            }
            processes.append(context.Process(target=_replica, args=(settings, ready, go, stop, results)))
            processes[-1].start()
        for _ in processes:
            ready.get(timeout=120)
        total = devices * messages
        go.set()
        started, publishers_running = publish_all(broker.port, names, messages, publishers)
        deadline = time.monotonic() + 600
        published = None
        while stored(setup) < total and time.monotonic() < deadline:
            time.sleep(0.05)
            if published is None and not any(p.is_alive() for p in publishers_running):
                published = time.perf_counter()
        done = time.perf_counter()
        published = published or done
        for process in publishers_running:
            process.join(60)
        time.sleep(0.5)  # the last acknowledgements
        stop.set()
        per_replica = sorted((results.get(timeout=120) for _ in processes), key=lambda r: r["replica"])
        count = stored(setup)
    finally:
        stop.set()
        for process in processes:
            process.join(60)
        setup.stop()
        broker.stop()
    received = sum(r["received"] for r in per_replica)
    batches = sum(r["batches"] for r in per_replica)
    cpu_s = sum(r["cpu_s"] for r in per_replica)
    return {
        "backend": backend,
        "replicas": replicas,
        "writers": writers,
        "devices": devices,
        "messages_per_device": messages,
        "publishers": publishers,
        "messages": total,
        "stored": count,
        "publish_s": round(published - started, 3),
        "ingest_s": round(done - started, 3),
        "ingested_per_s": round(count / (done - started), 1),
        "registry_cpu_s_per_10k": round(cpu_s / max(1, count) * 10_000, 3),
        "received_per_replica": [r["received"] for r in per_replica],
        "received": received,
        "batches": batches,
        "mean_batch": round(received / max(1, batches), 1),
        "duplicates": sum(r["duplicates"] for r in per_replica),
        "dropped": sum(r["dropped"] for r in per_replica),
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
                # one lane (the registry before ingest_writers), two lanes (the default on PostgreSQL),
                # then two replicas of two lanes on one shared subscription
                for replicas, writers in ((1, 1), (1, 2), (2, 2)):
                    rows.append(
                        run_case(
                            "postgresql",
                            server.database(),
                            args.devices,
                            args.messages,
                            args.publishers,
                            work,
                            replicas,
                            writers,
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
        "(broker, registry and publishers share the machine; each registry replica and each publisher is a "
        "process of its own, and the registry CPU is the replicas' processes'; several replicas split one "
        "MQTT 5 shared subscription).",
        "",
        "| database | replicas | writer lanes each | messages | stored | received per replica | publish s | ingest s "
        "| ingested / s | registry CPU s / 10k | duplicates | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['replicas']} | {r['writers']} | {r['messages']} | {r['stored']} | "
            f"{', '.join(map(str, r['received_per_replica']))} | {r['publish_s']} | {r['ingest_s']} | "
            f"{r['ingested_per_s']} | {r['registry_cpu_s_per_10k']} | {r['duplicates']} | {r['mean_batch']} |"
        )
    (args.out / "registry_ingest.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
