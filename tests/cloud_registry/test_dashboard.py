"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): sign-in, fleet,
model (with drift history and retraining jobs), job, rollout and device pages with their SVG charts drawn
by pygal on the server, and no request leaving the registry.
Screenshots go to build/test-artifacts/dashboard/ (or $EDGECTL_TEST_ARTIFACTS/dashboard/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from edgebundle.manifest import DriftSummary
from tests.cloud_registry.conftest import ADMIN_TOKEN
from tests.cloud_registry.helpers import make_bundle, telemetry, update_status

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    root = (
        os.environ.get("EDGECTL_TEST_ARTIFACTS")
        or Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
    )
    folder = Path(root) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _populate(live, signing, tmp_path) -> int:
    """Two versions, six devices with telemetry, and a rollout halted by its latency gate."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    http = httpx.Client(base_url=live.url, headers=admin)
    for version, top1, p95 in ((1, 0.95, 1.5), (2, 0.96, 1.2)):
        for target in ("cpu", "rpi5"):
            archive = make_bundle(
                tmp_path,
                signing[0],
                version=version,
                target=target,
                top1=top1,
                p95_ms=p95,
                drift_reference=REFERENCE,
            )
            assert http.post("/api/v1/bundles", content=archive.read_bytes()).status_code == 201
    http.put("/api/v1/models/digits/aliases/production", json={"version": 1})
    tokens = {}
    for i in range(6):
        token = http.post("/api/v1/enrollment-tokens", json={"group": "lab"}).json()["token"]
        name = f"cam-{i}"
        tokens[name] = httpx.post(
            f"{live.url}/v1/enroll", json={"token": token, "name": name, "target": "cpu" if i < 4 else "rpi5"}
        ).json()["device_token"]
    seq = dict.fromkeys(tokens, 0)

    def send(name, message_factory, **kw):  # type: ignore[no-untyped-def]
        seq[name] += 1
        message = message_factory(name, seq[name], **kw)
        kind = "telemetry" if message.kind == "telemetry" else "update"
        response = httpx.post(
            f"{live.url}/v1/device/{kind}",
            content=message.model_dump_json(),
            headers={"Authorization": f"Bearer {tokens[name]}", "Content-Type": "application/json"},
        )
        assert response.status_code == 204, response.text

    for step in range(12):
        for name in list(tokens)[:5]:  # cam-5 never reports: unknown health
            send(
                name,
                telemetry,
                version=1,
                p95=9.0 + (step % 4),
                errors=1 if name == "cam-3" else 0,
                confidence=[0] * 7 + [10, 30, 60],
            )
    rollout = http.post(
        "/api/v1/rollouts",
        json={"model": "digits", "version": 2, "selection": {"target": "cpu"}, "waves": [25, 100]},
    ).json()
    desired = httpx.get(
        f"{live.url}/v1/device/desired", headers={"Authorization": f"Bearer {tokens['cam-0']}"}
    )
    first = [
        n
        for n in tokens
        if httpx.get(
            f"{live.url}/v1/device/desired", headers={"Authorization": f"Bearer {tokens[n]}"}
        ).json()["desired"]
    ]
    assert desired.status_code == 200 and len(first) == 1
    update_id = httpx.get(
        f"{live.url}/v1/device/desired", headers={"Authorization": f"Bearer {tokens[first[0]]}"}
    ).json()["desired"]["update_id"]
    reconciler = live.registry.reconciler
    reconciler.tick()
    send(
        first[0],
        update_status,
        update_id=update_id,
        state="SUCCEEDED",
        to_version=2,
        from_version=1,
        rollout_id=rollout["id"],
    )
    reconciler.tick()
    for p95 in (11.0, 12.0, 16.0, 20.0):  # the p95 regression climbs past its 25 % gate on the last
        send(first[0], telemetry, version=2, p95=p95, confidence=[0] * 7 + [10, 30, 60])
        reconciler.tick()
    _retraining_history(live)
    return rollout["id"]


# The devices above are less sure than the build was on its validation data (10/30/60 against 1/9/90 %).
REFERENCE = DriftSummary(samples=500, confidence_hist=[0] * 7 + [5, 45, 450], class_hist=[50] * 10)


def _retraining_history(live) -> None:  # type: ignore[no-untyped-def]
    """Drift scored from the telemetry above (the devices drift: less confident than the reference), a policy,
    and two finished jobs as the retraining loop records them (tests/retraining runs real ones)."""
    import time

    from cloud_registry import db, retraining
    from cloud_registry import models as m
    from registry_api import retraining as rs

    registry = live.registry
    for tick in range(3):  # three scoring ticks over the same telemetry
        registry.jobs.score_drift(time.time() + tick * registry.settings.drift_interval_s, force=True)
    policy = rs.RetrainingPolicy(
        entry_point=rs.EntryPoint(callable="toolchain.finetune_digits:finetune"),
        triggers=rs.Triggers(drift=rs.DriftTrigger(threshold=0.25, sustained_s=600)),
    )
    with db.transaction(registry.factory) as session:
        record = retraining.set_policy(session, model_name="digits", policy=policy, actor="admin")
        model = session.get(m.Model, record.model_id)
        for key, state, parent, candidate in (
            ("drift:a", "rejected", 91.0, 62.5),
            ("drift:b", "succeeded", 48.6, 92.9),
        ):
            job = retraining.create_job(
                session,
                model=model,
                record=record,
                trigger="drift",
                key=key,
                details={"group": "lab", "value": 0.61},
                parent_version=1,
                actor="retraining",
            )
            job.state, job.attempt, job.runner, job.new_version = (
                state,
                1,
                "local",
                3 if state == "rejected" else 4,
            )
            job.evaluation = {
                "cpu": {"metric": "top1", "samples": 70, "parent": parent, "candidate": candidate}
            }
            job.outcome = {
                "ok": True,
                "metrics": {"epochs": 5},
                "seconds": {"training": 8.1, "building": 6.0},
            }
            job.reason = (
                "rejected: worse than its parent"
                if state == "rejected"
                else "accepted: as good as its parent"
            )
            job.log = f"job {job.id}: fine-tuning v1 on 180 new samples\noutcome: ok\n"
            job.started_at = job.finished_at = time.time()


def test_dashboard_pages_in_headless_chromium(live, signing, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make install` installs it")
    from playwright.sync_api import sync_playwright

    rollout_id = _populate(live, signing, tmp_path)
    out = artifacts_dir()
    foreign: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()

            def watch(request):  # type: ignore[no-untyped-def]
                if not request.url.startswith(live.url):
                    foreign.append(request.url)

            page.on("request", watch)
            page.goto(f"{live.url}/ui")
            assert page.url.endswith("/ui/login")  # no cookie: sign in first
            page.fill("#token", "wrong-token")
            page.click("#signin")
            assert "unknown or revoked token" in page.inner_text("#error")
            page.fill("#token", ADMIN_TOKEN)
            page.click("#signin")
            page.wait_for_url(f"{live.url}/ui")

            assert page.inner_text("#devices-total") == "6"
            rows = page.inner_text("#devices")
            assert "cam-0" in rows and "rpi5" in rows and "digits v1" in rows
            assert page.inner_text("#devices-online") == "5"  # cam-5 never spoke
            assert "degraded" in rows and "never" in rows  # cam-3 reports errors
            assert page.locator("svg.chart").count() == 2
            assert "halted" in page.inner_text("#rollouts")
            page.screenshot(path=str(out / "fleet.png"), full_page=True)

            page.click("#models a")
            page.wait_for_url(f"{live.url}/ui/models/digits")
            versions = page.inner_text("#versions")
            assert "top1" in versions and "0.96" in versions and "production" in versions
            assert (
                page.locator("svg.chart g.series rect.rect").count() == 8
            )  # pygal's bars: 4 artifacts x 2 charts
            drift = page.inner_text("#drift")
            assert "v1 lab" in drift and "v2 lab" in drift  # per version and device group
            charts = page.locator("#drift-charts svg.chart")
            # pygal's series: score and two PSI lines, and the policy's threshold as a dashed line.
            assert charts.count() == 2 and charts.nth(0).locator("g.series path.line").count() == 4
            assert charts.nth(0).locator("g.legend text", has_text="threshold").count() == 1
            assert "revision 1" in page.inner_text("#policy")
            jobs = page.inner_text("#jobs")
            assert "rejected" in jobs and "succeeded" in jobs and "91 → 62.5" in jobs
            page.screenshot(path=str(out / "model.png"), full_page=True)

            page.click("#jobs a >> text=#1")
            page.wait_for_url(f"{live.url}/ui/jobs/1")
            assert page.inner_text("#job-state") == "rejected"
            assert "62.5" in page.inner_text("#evaluation") and "fine-tuning v1" in page.inner_text("#log")
            page.screenshot(path=str(out / "job.png"), full_page=True)

            page.goto(f"{live.url}/ui/rollouts/{rollout_id}")
            assert page.inner_text("#rollout-state") == "halted"
            assert "p95_regression" in page.inner_text("#rollout-reason")
            assert "wave_started" in page.inner_text("#decisions") and "halted" in page.inner_text(
                "#decisions"
            )
            charts = page.locator("svg.chart")
            assert charts.count() == 4
            # p95 regression over time against its threshold: two series, one of them the threshold.
            assert charts.nth(2).locator("g.series path.line").count() == 2
            assert charts.nth(2).locator("g.legend text", has_text="threshold").count() == 1
            page.screenshot(path=str(out / "rollout.png"), full_page=True)

            page.click("#rollout-devices a >> nth=0")
            page.wait_for_url(f"{live.url}/ui/devices/*")
            assert page.locator("svg.chart g.series path.line").count() >= 4
            assert page.locator("script").count() == 0  # pygal's charts, without its script
            page.screenshot(path=str(out / "device.png"), full_page=True)

            page.goto(f"{live.url}/ui/devices/cam-3")
            assert page.inner_text("#device-health") == "degraded"
            page.click("text=Sign out")
            page.wait_for_url(f"{live.url}/ui/login")
        finally:
            context.close()
    assert foreign == []  # no CDN, no external script, font or image
    for name in ("fleet", "model", "rollout", "device", "job"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
