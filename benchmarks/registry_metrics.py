"""Benchmark: the cost of a Prometheus scrape of the registry's `GET /metrics` with a large fleet enrolled.

10,000 devices (by default) are written straight into the registry's database, shaped like a fleet:
20 groups, 5 targets, three model versions, 3 % offline, 1 % with a failed update, last telemetry on
each; one rollout running over all of them, two finished (one halted), and a drift score per version
and group. Then, in one process and one run:

- registry time: `cloud_registry.metrics.exposition()` (the database queries and the text), timed
  `--repeats` times after a warm-up;
- the whole HTTP scrape through uvicorn on loopback with a read-only token, as Prometheus does it;
- the size of the answer in bytes and its number of series;

on SQLite and PostgreSQL, with per-device series off (the default) and on. The goal: at most 50 ms of
registry time for 10,000 devices.

Writes benchmarks/results/registry_metrics.{json,md,png}.

    .venv/bin/python benchmarks/registry_metrics.py [--devices 10000] [--repeats 30] [--database sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUPS = [f"site-{i:02d}" for i in range(20)]
TARGETS = ["cpu", "rpi5", "jetson-orin-nx", "android-arm64", "jetson-nano"]


def populate(factory, devices: int, seed: int = 1) -> None:  # type: ignore[no-untyped-def]
    """The fleet, rollouts, update statuses and drift scores, inserted in bulk (enrolling 10,000 over HTTP measures nothing here)."""
    from sqlalchemy import insert, select

    from cloud_registry import models as m

    rng = random.Random(seed)
    now = time.time()
    with factory() as session, session.begin():
        model = m.Model(name="detector", created_at=now)
        session.add(model)
        session.flush()
        versions = []
        for v in (1, 2, 3):
            row = m.ModelVersion(
                model_id=model.id, version=v, created_at=now, source_kind="onnx", source_sha256="0" * 64
            )
            session.add(row)
            versions.append(row)
        session.flush()
        rows = []
        for i in range(devices):
            offline = rng.random() < 0.03
            failed = rng.random() < 0.01
            version = rng.choice((1, 2, 2, 3))
            rows.append(
                {
                    "name": f"dev-{i:06d}",
                    "fleet": "default",
                    "target": TARGETS[i % len(TARGETS)],
                    "group": GROUPS[i % len(GROUPS)],
                    "tags": [],
                    "hardware": {},
                    "token_hash": f"{i:064x}",
                    "mqtt_password_hash": "x",
                    "enrolled_at": now - 86400,
                    "online": not offline,
                    "presence_session": 1,
                    "last_seen": now - rng.uniform(0, 60),
                    "agent_version": "0.1.0",
                    "model_name": "detector",
                    "current_version": version,
                    "slot": "a",
                    "last_update_state": "FAILED" if failed else "SUCCEEDED",
                    "last_telemetry_at": now - rng.uniform(0, 60),
                    "last_telemetry": {
                        "inference": {
                            "count": 600,
                            "errors": int(rng.random() < 0.005),
                            "latency_ms_p50": 8.0,
                            "latency_ms_p95": round(rng.uniform(9, 14), 3),
                        },
                        "system": {"cpu_percent": 40.0},
                    },
                }
            )
        session.execute(insert(m.Device), rows)
        ids = list(session.scalars(select(m.Device.id).order_by(m.Device.id)))
        for index, (state, version) in enumerate((("completed", 0), ("halted", 1), ("running", 2))):
            rollout = m.Rollout(
                version_id=versions[version].id,
                state=state,
                selection={},
                waves=[1, 10, 50, 100],
                policy={},
                current_wave=2 if state == "running" else 0,
                created_at=now - 3600 * (3 - index),
                created_by="bench",
                updated_at=now,
                finished_at=None if state == "running" else now - 600,
                reason="health gate crossed: p95_regression 0.31 > 0.25" if state == "halted" else None,
            )
            session.add(rollout)
            session.flush()
            chosen = ids if state == "running" else ids[: len(ids) // 100]
            session.execute(
                insert(m.RolloutDevice),
                [
                    {
                        "rollout_id": rollout.id,
                        "device_id": device_id,
                        "wave": n % 4,
                        "state": rng.choice(("pending", "updating", "succeeded", "succeeded", "failed")),
                    }
                    for n, device_id in enumerate(chosen)
                ],
            )
        # Each device's update history: three updates of three statuses each, 2 % of them failed, so the
        # failed-updates counter reads a table of 9 rows per device.
        events = []
        for device_id in ids:
            for to_version in (1, 2, 3):
                update_id = f"r{to_version}-u{to_version}-d{device_id}"
                end = "FAILED" if rng.random() < 0.02 else "SUCCEEDED"
                for step, state in enumerate(("DOWNLOADING", "ACTIVATING", end)):
                    at = now - 86400 + 3600 * to_version + step
                    events.append(
                        {
                            "device_id": device_id,
                            "msg_id": f"{device_id:08x}{to_version:04x}{step:020x}",
                            "seq": to_version * 3 + step,
                            "sent_at": at,
                            "received_at": at,
                            "update_id": update_id,
                            "rollout_id": None,
                            "model": "detector",
                            "from_version": to_version - 1 or None,
                            "to_version": to_version,
                            "state": state,
                        }
                    )
        session.execute(insert(m.UpdateEvent), events)
        for version in (1, 2, 3):
            for group in GROUPS:
                session.add(
                    m.DriftScore(
                        model_id=model.id,
                        model_version=version,
                        device_group=group,
                        bucket=int(now // 60),
                        at=now - 30,
                        window_s=900,
                        devices=devices // len(GROUPS) // 3,
                        samples=50_000,
                        psi_confidence=rng.uniform(0, 0.4),
                        psi_class=rng.uniform(0, 0.2),
                        mean_shift_z=rng.uniform(0, 3),
                        score=rng.uniform(0, 0.4),
                        summary={},
                    )
                )


def measure(database_url: str, devices: int, repeats: int, per_device: bool, workdir: Path) -> dict:
    import httpx

    from cloud_registry import metrics
    from cloud_registry.main import create_app
    from edgebundle import generate_keypair
    from tests.cloud_registry.conftest import ADMIN_TOKEN, make_settings
    from tests.cloud_registry.conftest import served as serve

    _, public = generate_keypair(workdir / "keys")
    app = create_app(make_settings(workdir / "registry", public, database_url, metrics_per_device=per_device))
    registry = app.state.registry
    with serve(app) as url:
        populate(registry.factory, devices)
        token = httpx.post(
            f"{url}/api/v1/tokens",
            json={"name": "prometheus", "role": "read-only"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ).json()["token"]
        for _ in range(3):
            body = metrics.exposition(registry)  # warm-up: the planner, the connection pool
        inside = []
        for _ in range(repeats):
            start = time.perf_counter()
            body = metrics.exposition(registry)
            inside.append((time.perf_counter() - start) * 1000)
        over_http = []
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.get(f"{url}/metrics")
                over_http.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    inside.sort()
    over_http.sort()
    return {
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "per_device": per_device,
        "devices": devices,
        "registry_ms_p50": round(statistics.median(inside), 2),
        "registry_ms_p95": round(inside[int(0.95 * (len(inside) - 1))], 2),
        "http_ms_p50": round(statistics.median(over_http), 2),
        "http_ms_p95": round(over_http[int(0.95 * (len(over_http) - 1))], 2),
        "bytes": len(response.content),
        "series": series,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['database']}\n{'per-device' if r['per_device'] else 'default'}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = range(len(rows))
    left.bar([x - 0.2 for x in xs], [r["registry_ms_p50"] for r in rows], 0.4, label="registry time p50")
    left.bar([x + 0.2 for x in xs], [r["http_ms_p50"] for r in rows], 0.4, label="HTTP scrape p50")
    left.axhline(50, color="crimson", linestyle="--", label="goal: 50 ms")
    left.set_xticks(list(xs), labels)
    left.set_ylabel("ms")
    left.set_title(f"Scrape of /metrics, {rows[0]['devices']:,} devices")
    left.legend(loc="upper left", fontsize=8)
    right.bar(list(xs), [r["bytes"] / 1024 for r in rows], color="slategray")
    right.set_xticks(list(xs), labels)
    right.set_ylabel("KiB")
    right.set_title("Size of the answer")
    for x, r in zip(xs, rows, strict=True):
        right.annotate(
            f"{r['series']:,} series", (x, r["bytes"] / 1024), ha="center", va="bottom", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--database", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    for database in args.database.split(","):
        for per_device in (False, True):
            with tempfile.TemporaryDirectory(prefix="edgectl-metrics-") as tmp:
                if database == "postgresql":
                    from tests.services import Postgres

                    server = Postgres().start()
                    try:
                        row = measure(server.database(), args.devices, args.repeats, per_device, Path(tmp))
                    finally:
                        server.stop()
                else:
                    row = measure("", args.devices, args.repeats, per_device, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    host = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry_metrics.json").write_text(json.dumps({"host": host, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Registry /metrics scrape, {args.devices:,} devices",
        "",
        f"{args.repeats} scrapes each after a warm-up, one process, {host['cpus']} CPUs. Registry time is "
        "`cloud_registry.metrics.exposition()` (queries and text); HTTP adds uvicorn, the token check and "
        "the loopback round trip. Goal: registry time at most 50 ms with per-device series off.",
        "",
        "| database | per-device series | registry p50 ms | registry p95 ms | HTTP p50 ms | HTTP p95 ms | bytes | series |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['database']} | {'on' if r['per_device'] else 'off'} | {r['registry_ms_p50']} | "
            f"{r['registry_ms_p95']} | {r['http_ms_p50']} | {r['http_ms_p95']} | {r['bytes']:,} | {r['series']:,} |"
        )
    lines += ["", "![scrape cost](registry_metrics.png)", ""]
    (args.out / "registry_metrics.md").write_text("\n".join(lines))
    plot(rows, args.out / "registry_metrics.png")


if __name__ == "__main__":
    main()
