"""Benchmark: telemetry messages ingested per second from many simulated devices through a real broker.

A real Mosquitto on a loopback port, the registry's own MQTT link and ingest
writer (batches, duplicate check, manual acks), and simulated devices that
publish edgewire Telemetry at QoS 1 on their own topics. "Ingested" means
committed to the database; the rate is messages over the time from the first
publish (live) or from the replicas' start on a waiting backlog (drain) to the
last commit. Runs once on SQLite, then on PostgreSQL (a throw-away server) when
its binaries are present: live with one and two lanes and two replicas (one and two lanes each), and
draining a backlog with one and two replicas.

Writes benchmarks/results/registry_ingest.{json,md,png}.

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


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants, the running ones and those reaped (Linux /proc).

    PostgreSQL forks a backend per connection and runs as another user behind a wrapper, so its share
    is the whole tree under the process the benchmark started."""
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(member, 0) for member in tree) / os.sysconf("SC_CLK_TCK")


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


def _replica(settings: dict, ready, go, stop, results, drain: bool = False) -> None:  # type: ignore[no-untyped-def]
    """One registry replica in a process of its own; reports its ingest stats and CPU seconds from `go`.

    With `drain`, its MQTT network loop is held (paho's loop_stop) until `go`: the broker keeps what the
    devices publish for its session meanwhile, and from `go` the replica works through that backlog."""
    sys.path.insert(0, str(ROOT))
    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry

    registry = Registry(Settings(**settings))
    registry.start()
    assert registry.link.subscribed.wait(60)
    if drain:
        registry.link.client.loop_stop()
    ready.put(settings["mqtt_client_id"])
    go.wait()
    cpu = time.process_time()
    if drain:
        registry.link.client.loop_start()
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
    drain: bool = False,
    database_pid: int | None = None,
) -> dict:
    """Registry replicas (processes, one MQTT 5 shared subscription when several) and publisher processes.

    Live: the replicas take messages while the publishers send them, every process on the same CPUs. Drain:
    the publishers send everything first while the replicas hold their network loop; the clock starts
    when they let go, so the rate is what the registries and PostgreSQL do with the CPUs to themselves (a
    fleet reconnecting after an outage, a registry back from a restart)."""
    import multiprocessing

    from cloud_registry.core.config import Settings
    from cloud_registry.service import Registry
    from tests.services import Mosquitto

    label = f"{backend}-x{replicas}-w{writers}{'-drain' if drain else ''}"
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
            processes.append(
                context.Process(target=_replica, args=(settings, ready, go, stop, results, drain))
            )
            processes[-1].start()
        for _ in processes:
            ready.get(timeout=120)
        total = devices * messages
        published = None  # when the last publisher finished
        if drain:
            published_at, publishers_running = publish_all(broker.port, names, messages, publishers)
            for process in publishers_running:
                process.join(300)
            started = time.perf_counter()
            published = started  # before the clock: publish_s below is the publishers' own time
            publish_s = started - published_at
            servers_cpu = _servers_cpu(broker, database_pid)
            go.set()
        else:
            servers_cpu = _servers_cpu(broker, database_pid)
            go.set()
            started, publishers_running = publish_all(broker.port, names, messages, publishers)
        deadline = time.monotonic() + 600
        while stored(setup) < total and time.monotonic() < deadline:
            time.sleep(0.05)
            if published is None and not any(p.is_alive() for p in publishers_running):
                published = time.perf_counter()
        done = time.perf_counter()
        servers_cpu = [
            after - before
            for before, after in zip(servers_cpu, _servers_cpu(broker, database_pid), strict=True)
        ]
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
        "mode": "drain" if drain else "live",
        "replicas": replicas,
        "writers": writers,
        "devices": devices,
        "messages_per_device": messages,
        "publishers": publishers,
        "messages": total,
        "stored": count,
        "publish_s": round(publish_s if drain else published - started, 3),
        "ingest_s": round(done - started, 3),
        "ingested_per_s": round(count / (done - started), 1),
        "registry_cpu_s_per_10k": round(cpu_s / max(1, count) * 10_000, 3),
        "broker_cpu_s_per_10k": round(servers_cpu[0] / max(1, count) * 10_000, 3),
        "database_cpu_s_per_10k": round(servers_cpu[1] / max(1, count) * 10_000, 3) if database_pid else None,
        "received_per_replica": [r["received"] for r in per_replica],
        "received": received,
        "batches": batches,
        "mean_batch": round(received / max(1, batches), 1),
        "duplicates": sum(r["duplicates"] for r in per_replica),
        "dropped": sum(r["dropped"] for r in per_replica),
    }


def _servers_cpu(broker, database_pid: int | None) -> list[float]:  # type: ignore[no-untyped-def]
    return [tree_cpu_s(broker.process.pid), tree_cpu_s(database_pid) if database_pid else 0.0]


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n{r['mode']} x{r['replicas']}\n{r['writers']} lanes" for r in rows]
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    bars = rate.bar(labels, [r["ingested_per_s"] for r in rows], color="#37a")
    rate.bar_label(bars, fmt="%.0f", fontsize=8)
    rate.axhline(10_000, color="#c33", linestyle="--", label="goal: 10,000 / s")
    rate.set_ylabel("messages committed / s")
    rate.set_ylim(0, max(10_000, *(r["ingested_per_s"] for r in rows)) * 1.15)
    rate.legend(fontsize=8, loc="upper left")
    bottom = [0.0] * len(rows)
    for key, name, color in (
        ("registry_cpu_s_per_10k", "registry", "#37a"),
        ("database_cpu_s_per_10k", "PostgreSQL", "#3a7"),
        ("broker_cpu_s_per_10k", "Mosquitto", "#aa3"),
    ):
        values = [r[key] or 0.0 for r in rows]
        cpu.bar(labels, values, bottom=bottom, color=color, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cpu.axhline(2.0, color="#c33", linestyle="--", label="2 CPUs at 10,000 / s")
    cpu.set_ylabel("CPU s per 10,000 messages")
    cpu.set_ylim(0, max(2.0, *bottom) * 1.3)  # room for the legend above the bars
    cpu.legend(fontsize=8, ncol=2, loc="upper left")
    for ax in (rate, cpu):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
                # live: one lane (the registry before ingest_writers), two lanes (the default on
                # PostgreSQL), two replicas on one shared subscription with one lane and with two
                # each; then the same replicas draining a backlog the publishers sent first
                for replicas, writers, drain in (
                    (1, 1, False),
                    (1, 2, False),
                    (2, 1, False),
                    (2, 2, False),
                    (1, 2, True),
                    (2, 1, True),
                    (2, 2, True),
                ):
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
                            drain=drain,
                            database_pid=server.process.pid,
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
        "(broker, PostgreSQL, registry and publishers share the machine; each registry replica and each "
        "publisher is a process of its own; several replicas split one MQTT 5 shared subscription). "
        "*live*: the replicas take the messages while the publishers send them; *drain*: the publishers send "
        "everything first while the replicas hold their network loop, and the clock starts when they let go. "
        "CPU seconds per 10,000 messages stored: the replicas' processes, the broker's, and PostgreSQL's "
        "(the server and its backends), over the timed part.",
        "",
        "![ingest](registry_ingest.png)",
        "",
        "| database | mode | replicas | writer lanes each | messages | stored | received per replica | publish s "
        "| ingest s | ingested / s | registry CPU s / 10k | PostgreSQL CPU s / 10k | broker CPU s / 10k "
        "| duplicates | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['replicas']} | {r['writers']} | {r['messages']} | {r['stored']} | "
            f"{', '.join(map(str, r['received_per_replica']))} | {r['publish_s']} | {r['ingest_s']} | "
            f"{r['ingested_per_s']} | {r['registry_cpu_s_per_10k']} | {r['database_cpu_s_per_10k'] or '-'} | "
            f"{r['broker_cpu_s_per_10k']} | {r['duplicates']} | {r['mean_batch']} |"
        )
    write_plot(rows, args.out / "registry_ingest.png")
    (args.out / "registry_ingest.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
