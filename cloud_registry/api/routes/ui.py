"""The dashboard at /ui: server-rendered pages (Jinja2) with SVG charts drawn by pygal (charts.py); no JavaScript.

Signing in stores an API token (any role) in an HttpOnly, SameSite=Strict cookie;
every page needs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from cloud_registry import charts, crud, rollout_info, rollouts
from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry.api.deps import UI_COOKIE, RegistryDep, SessionDep
from edgebase.ids import NAME_PATTERN, SLUG_PATTERN

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parents[2] / "templates"))
templates.env.globals["ago"] = lambda t: "never" if t is None else f"{max(0, time.time() - t):.0f} s ago"
templates.env.globals["clock"] = lambda t: (
    "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
)
templates.env.filters["num"] = lambda v, digits=3: "—" if v is None else f"{v:.{digits}g}"


def _who(request: Request, session) -> str | None:  # type: ignore[no-untyped-def]
    secret = request.cookies.get(UI_COOKIE)
    row = crud.token_by_secret(session, token=secret) if secret else None
    return row.name if row else None


def _page(request: Request, session, name: str, **context) -> Response:  # type: ignore[no-untyped-def]
    user = _who(request, session)
    if user is None:
        return RedirectResponse("/ui/login", status_code=303)
    return templates.TemplateResponse(request, name, {"user": user, **context})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"user": None, "error": None})


@router.post("/login")
def login(request: Request, session: SessionDep, token: Annotated[str, Form(max_length=256)]) -> Response:
    if crud.token_by_secret(session, token=token) is None:
        return templates.TemplateResponse(
            request, "login.html", {"user": None, "error": "unknown or revoked token"}, status_code=401
        )
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        UI_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(UI_COOKIE)
    return response


@router.get("", response_class=HTMLResponse)
def fleet(request: Request, session: SessionDep, registry: RegistryDep) -> Response:
    timeout = registry.settings.presence_timeout_s
    devices = [
        device_records.device_info(d, presence_timeout_s=timeout)
        for d in device_records.list_devices(session)
    ]
    versions: dict[str, int] = {}
    for device in devices:
        key = f"{device.model.name} v{device.model.version}" if device.model.name else "no model"
        versions[key] = versions.get(key, 0) + 1
    health: dict[str, int] = {}
    for device in devices:
        health[device.health] = health.get(device.health, 0) + 1
    recent = session.scalars(select(m.Rollout).order_by(m.Rollout.id.desc()).limit(10)).all()
    return _page(
        request,
        session,
        "fleet.html",
        devices=devices,
        online=sum(d.online for d in devices),
        models=crud.list_models(session),
        rollouts=[rollout_info.rollout_info(session, r, decisions=1) for r in recent],
        version_chart=charts.bar_chart("Devices per model version", sorted(versions.items())),
        health_chart=charts.bar_chart("Devices per health", sorted(health.items())),
    )


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    request: Request, session: SessionDep, name: Annotated[str, PathParam(pattern=NAME_PATTERN)]
) -> Response:
    model = crud.get_model(session, name=name)
    versions = [crud.version_info(v, model) for v in reversed(model.versions)]
    metric_bars, latency_bars = [], []
    for version in reversed(versions):
        for artifact in version.artifacts:
            label = f"v{version.version} {artifact.target}"
            if artifact.metric_value is not None:
                metric_bars.append((label, artifact.metric_value))
            if artifact.latency_ms_p95 is not None:
                latency_bars.append((label, artifact.latency_ms_p95))
    return _page(
        request,
        session,
        "model.html",
        model=model,
        versions=versions,
        aliases=crud.alias_map(model),
        metric_chart=charts.bar_chart("Validation metric per version and target", metric_bars),
        latency_chart=charts.bar_chart(
            "Benchmark p95 latency per version and target", latency_bars, unit=" ms"
        ),
        **retraining_context(session, model),
    )


def retraining_context(session, model: m.Model) -> dict:  # type: ignore[no-untyped-def]
    """The model page's retraining part: drift per version and group over time, the policy, the jobs."""
    from cloud_registry import drift, retraining
    from cloud_registry.jobs.records import job_info, list_jobs
    from registry_api import retraining as rs

    record = retraining.get_policy(session, model_id=model.id)
    policy = rs.RetrainingPolicy.model_validate(record.policy) if record else None
    trigger = policy.triggers.drift if policy else None
    series: dict[tuple[int, str], list[m.DriftScore]] = {}
    for row in drift.history(session, model_id=model.id, limit=5000):
        series.setdefault((row.model_version, row.device_group), []).append(row)
    drift_charts, drift_rows = [], []
    for (version, group), rows in sorted(series.items()):
        name = f"v{version} {group or '(no group)'}"
        lines = {
            "score": [(r.at, r.score) for r in rows],
            "psi confidence": [(r.at, r.psi_confidence) for r in rows],
            "psi class": [(r.at, r.psi_class) for r in rows],
        }
        thresholds = {"score": trigger.threshold} if trigger and trigger.metric == "score" else {}
        drift_charts.append(
            charts.line_chart(f"Drift of {name} against its build reference", lines, thresholds=thresholds)
        )
        drift_rows.append({"series": name, "latest": drift.point(rows[-1]), "points": len(rows)})
    jobs = [job_info(job) for job in list_jobs(session, model=model.name, limit=50)]
    return {
        "policy": policy,
        "policy_record": record,
        "drift_charts": drift_charts,
        "drift_rows": drift_rows,
        "jobs": jobs,
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, session: SessionDep, job_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
) -> Response:
    from cloud_registry.jobs.records import get_job, job_info, job_log

    job = get_job(session, job_id=job_id)
    return _page(request, session, "job.html", job=job_info(job), inputs=job.inputs or {}, log=job_log(job))


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(
    request: Request, session: SessionDep, rollout_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
) -> Response:
    rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
    info = rollout_info.rollout_info(session, rollout)
    evaluations = session.scalars(
        select(m.GateEvaluation)
        .where(m.GateEvaluation.rollout_id == rollout_id)
        .order_by(m.GateEvaluation.at)
    ).all()
    policy = info.policy
    figures = []
    for gate, threshold in (
        ("failure_rate", policy.max_failure_rate),
        ("error_rate_increase", policy.max_error_rate_increase),
        ("p95_regression", policy.max_p95_regression),
        ("confidence_psi", policy.max_confidence_psi),
    ):
        points = [(e.at, e.values[gate]) for e in evaluations if e.values.get(gate) is not None]
        figures.append(
            charts.line_chart(gate.replace("_", " "), {gate: points}, thresholds={gate: threshold})
        )
    entries = [
        {
            "device": e.device.name,
            "wave": e.wave + 1,
            "from": e.from_version,
            "state": e.state,
            "reason": e.reason,
        }
        for e in rollout.devices
    ]
    return _page(request, session, "rollout.html", rollout=info, charts=figures, entries=entries)


@router.get("/devices/{name}", response_class=HTMLResponse)
def device_page(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    name: Annotated[str, PathParam(pattern=SLUG_PATTERN)],
) -> Response:
    device = device_records.get_device(session, name=name)
    points = device_records.device_points(
        session, device=device, limit=500
    )  # raw, then hourly past the retention

    def series(attr: str) -> list[tuple[float, float]]:
        return [(p.received_at, getattr(p, attr)) for p in points if getattr(p, attr) is not None]

    figures = [
        charts.line_chart(
            "Latency (ms)", {"p50": series("latency_ms_p50"), "p95": series("latency_ms_p95")}, y_label="ms"
        ),
        charts.line_chart(
            "Inferences and errors per interval", {"inferences": series("count"), "errors": series("errors")}
        ),
        charts.line_chart(
            "System", {"cpu %": series("cpu_percent"), "memory %": series("memory_percent")}, y_label="%"
        ),
        charts.line_chart("Model version", {"version": series("model_version")}),
    ]
    history = session.scalars(
        select(m.DesiredRecord)
        .where(m.DesiredRecord.device_id == device.id)
        .order_by(m.DesiredRecord.id.desc())
        .limit(20)
    ).all()
    return _page(
        request,
        session,
        "device.html",
        device=device_records.device_info(device, presence_timeout_s=registry.settings.presence_timeout_s),
        charts=figures,
        history=history,
    )
