"""The registry's Prometheus metrics: what the fleet, its rollouts, ingest, drift and retraining look like
now, computed from the database at scrape time (`GET /metrics`).

Made with `prometheus_client` (the Prometheus project's own Python client): a custom collector yields
the families on each scrape, and the library writes the exposition format, escaping label values a
device or an operator chose (group and model names). Nothing is counted twice across replicas: every
gauge is read from the shared database; only the ingest counters belong to the replica that serves the
scrape (they reset when it restarts, which `rate()` handles).

Labels stay low-cardinality. Devices are counted by presence, health, model version, target and group,
never one series per device unless `metrics_per_device` is on (100,000 devices must not mean 100,000
series). Rollouts appear while active and for `metrics_rollout_window_s` after they finish, so a long
history does not grow the scrape; a halted rollout's `reason` is a fixed word (the gate that crossed,
`timeout`, `failures` or `manual`), never the decision's free text.

Every figure comes from a handful of GROUP BY queries; the scrape of 10,000 enrolled devices is measured
by benchmarks/registry_metrics.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, not_, or_, select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from edgewire.update_states import FAILED_UPDATE_STATES
from registry_api import schemas

if TYPE_CHECKING:  # pragma: no cover
    from cloud_registry.service import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GATES = ("failure_rate", "error_rate_increase", "p95_regression", "confidence_psi")
NO_GROUP = ""  # devices outside any group: the label is empty, as in the drift scores


def halt_reason(text: str | None) -> str:
    """A halted rollout's reason as one fixed word: the first gate its decision names, or the kind."""
    text = text or ""
    if text.startswith("health gate crossed"):
        named = [(text.find(gate), gate) for gate in GATES if gate in text]
        return min(named)[1] if named else "gate"
    if "did not" in text and " s " in f"{text} ":
        return "timeout"
    if "succeeded" in text or "failed" in text:
        return "failures"
    return "manual"


def _device_rows(session: Session, *, now: float, presence_timeout_s: float) -> list[Any]:
    """Devices counted by (presence, health, model, version, target, group), one GROUP BY."""
    d = m.Device
    revoked = d.revoked_at.is_not(None)
    offline = or_(not_(d.online), and_(d.last_seen.is_not(None), d.last_seen < now - presence_timeout_s))
    errors = func.coalesce(d.last_telemetry["inference"]["errors"].as_float(), 0)
    presence = case((revoked, "revoked"), (offline, "offline"), else_="online")
    health = case(
        (revoked, "revoked"),
        (offline, "offline"),
        (d.last_update_state.in_(FAILED_UPDATE_STATES), "degraded"),
        (errors > 0, "degraded"),
        (d.last_telemetry_at.is_not(None), "ok"),
        else_="unknown",
    )
    failed = case((and_(not_(revoked), d.last_update_state.in_(FAILED_UPDATE_STATES)), 1), else_=0)
    query = select(
        presence.label("presence"),
        health.label("health"),
        d.model_name,
        d.current_version,
        d.target,
        d.group,
        func.count().label("n"),
        func.sum(failed).label("failed"),
    ).group_by(presence, health, d.model_name, d.current_version, d.target, d.group)
    return list(session.execute(query))


def _per_device_rows(session: Session, *, now: float, presence_timeout_s: float) -> list[Any]:
    d = m.Device
    online = and_(d.online, or_(d.last_seen.is_(None), d.last_seen >= now - presence_timeout_s))
    p95 = d.last_telemetry["inference"]["latency_ms_p95"].as_float()
    query = select(d.name, case((online, 1), else_=0), p95).where(d.revoked_at.is_(None)).order_by(d.name)
    return list(session.execute(query))


def _rollouts(session: Session, *, since: float) -> list[Any]:
    r = m.Rollout
    shown = or_(r.state.in_(schemas.ACTIVE_ROLLOUT_STATES), r.finished_at >= since)
    query = (
        select(r.id, r.state, r.current_wave, r.reason, r.finished_at, m.Model.name, m.ModelVersion.version)
        .join(m.ModelVersion, m.ModelVersion.id == r.version_id)
        .join(m.Model, m.Model.id == m.ModelVersion.model_id)
        .where(shown)
        .order_by(r.id)
    )
    return list(session.execute(query))


def _rollout_devices(session: Session, rollout_ids: list[int]) -> list[Any]:
    if not rollout_ids:
        return []
    rd = m.RolloutDevice
    query = (
        select(rd.rollout_id, rd.state, func.count())
        .where(rd.rollout_id.in_(rollout_ids))
        .group_by(rd.rollout_id, rd.state)
    )
    return list(session.execute(query))


def _drift(session: Session, *, since: float) -> tuple[list[m.DriftScore], dict[int, tuple[str, Any]]]:
    """The newest drift score of each (model, version, group) scored since `since`, and each model's name
    and drift trigger (None without a policy that has one)."""
    from registry_api import retraining as rs

    ds = m.DriftScore
    newest = (
        select(func.max(ds.id))
        .where(ds.at >= since)
        .group_by(ds.model_id, ds.model_version, ds.device_group)
        .scalar_subquery()
    )
    rows = list(session.scalars(select(ds).where(ds.id.in_(newest)).order_by(ds.id)))
    models: dict[int, tuple[str, Any]] = {}
    ids = sorted({row.model_id for row in rows})
    if ids:
        names = {
            i: n for i, n in session.execute(select(m.Model.id, m.Model.name).where(m.Model.id.in_(ids)))
        }
        policies = {
            record.model_id: rs.RetrainingPolicy.model_validate(record.policy)
            for record in session.scalars(
                select(m.RetrainingPolicyRecord).where(m.RetrainingPolicyRecord.model_id.in_(ids))
            )
        }
        for model_id in ids:
            policy = policies.get(model_id)
            models[model_id] = (names[model_id], policy)
    return rows, models


def _jobs(session: Session) -> dict[str, int]:
    j = m.RetrainingJob
    return {state: count for state, count in session.execute(select(j.state, func.count()).group_by(j.state))}


class RegistryCollector:
    """A prometheus_client collector: each `collect()` reads the database once and yields every family."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self) -> list[Any]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        settings = self.registry.settings
        now = time.time()

        def gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"edgectl_registry_{name}", text, labels=labels)

        with self.registry.factory() as session:
            devices = _device_rows(session, now=now, presence_timeout_s=settings.presence_timeout_s)
            rollouts = _rollouts(session, since=now - settings.metrics_rollout_window_s)
            touched = _rollout_devices(session, [row.id for row in rollouts])
            drift_since = now - max(3 * settings.drift_interval_s, settings.drift_window_s)
            drift_rows, drift_models = _drift(session, since=drift_since)
            jobs = _jobs(session)
            per_device = (
                _per_device_rows(session, now=now, presence_timeout_s=settings.presence_timeout_s)
                if settings.metrics_per_device
                else []
            )
            deliveries = _webhook_counts(session)
            failed_updates = _failed_updates(session)

        # The fleet.
        by: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
        failures = 0
        for row in devices:
            by["presence"][(row.presence,)] += row.n
            by["health"][(row.health,)] += row.n
            by["target"][(row.target,)] += row.n
            if row.presence != "revoked":
                by["group"][(row.group or NO_GROUP, row.presence)] += row.n
                if row.model_name is not None:
                    version = "" if row.current_version is None else str(row.current_version)
                    by["version"][(row.model_name, version)] += row.n
            failures += int(row.failed or 0)
        for group, _ in list(by["group"]):
            for key in ("online", "offline"):  # both, so a group's offline share is a ratio of two series
                by["group"].setdefault((group, key), 0)
        for key in ("online", "offline", "revoked"):
            by["presence"].setdefault((key,), 0)
        for key in ("ok", "degraded", "offline", "unknown", "revoked"):
            by["health"].setdefault((key,), 0)
        families = [
            ("devices", "Enrolled devices by presence (revoked ones apart).", ["presence"], by["presence"]),
            ("devices_by_health", "Enrolled devices by health.", ["health"], by["health"]),
            ("devices_by_target", "Enrolled devices by target profile.", ["target"], by["target"]),
            (
                "devices_by_version",
                "Devices (not revoked) by the model and version they report serving.",
                ["model", "version"],
                by["version"],
            ),
            (
                "group_devices",
                "Devices (not revoked) per device group and presence; group '' is devices in none.",
                ["group", "presence"],
                by["group"],
            ),
        ]
        for name, text, labels, counts in families:
            family = gauge(name, text, labels)
            for key, value in sorted(counts.items()):
                family.add_metric(list(key), value)
            yield family
        family = gauge("update_failures", "Devices whose last update failed, rolled back or was refused.", [])
        family.add_metric([], failures)
        yield family
        ever = CounterMetricFamily(
            "edgectl_registry_failed_updates", "Updates that ended failed, rolled back or refused, ever."
        )
        ever.add_metric([], failed_updates)
        yield ever

        # Rollouts.
        info = gauge(
            "rollout_info",
            "Rollouts active or finished lately (value 1).",
            ["rollout", "model", "version", "state"],
        )
        wave = gauge(
            "rollout_wave", "A rollout's current wave (0 is the first; -1 before it starts).", ["rollout"]
        )
        halted = gauge(
            "rollout_halted", "1 for each halted rollout, with why in a word.", ["rollout", "reason"]
        )
        finished = gauge(
            "rollout_finished_timestamp_seconds",
            "When a finished rollout ended (Unix seconds), so an alert can stop firing after a while.",
            ["rollout"],
        )
        by_state: dict[str, int] = dict.fromkeys((state.value for state in schemas.RolloutState), 0)
        for row in rollouts:
            rid = str(row.id)
            info.add_metric([rid, row.name, str(row.version), row.state], 1)
            wave.add_metric([rid], row.current_wave)
            by_state[row.state] = by_state.get(row.state, 0) + 1
            if row.state == "halted":
                halted.add_metric([rid, halt_reason(row.reason)], 1)
            if row.finished_at is not None:
                finished.add_metric([rid], row.finished_at)
        touched_family = gauge(
            "rollout_devices", "Devices a rollout chose, by their state in it.", ["rollout", "outcome"]
        )
        for rollout_id, state, count in sorted(touched):
            touched_family.add_metric([str(rollout_id), state], count)
        states = gauge("rollouts", "Rollouts active or finished lately, by state.", ["state"])
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield from (info, wave, halted, finished, touched_family, states)

        # Ingest: this replica's writer since it started.
        ingest = self.registry.ingest
        stats = ingest.stats if ingest is not None else None
        for field, text in (
            ("received", "MQTT messages taken off the broker by this replica."),
            ("stored", "Messages stored."),
            ("duplicates", "Messages already stored (redeliveries), not stored again."),
            ("dropped", "Messages dropped: unreadable, unstorable or refused by the database."),
            ("poison", "Messages the database refused, isolated and dropped (counted in dropped too)."),
            ("errors", "Failed attempts to write a batch (database down, or a poison message in it)."),
        ):
            counter = CounterMetricFamily(f"edgectl_registry_ingest_{field}", text)
            counter.add_metric([], getattr(stats, field) if stats is not None else 0)
            yield counter
        depth = gauge("ingest_queue_depth", "Messages received and waiting for the database.", [])
        depth.add_metric([], ingest.depth() if ingest is not None else 0)
        yield depth
        lag = gauge(
            "ingest_commit_lag_seconds",
            "Seconds since the writer last committed while messages wait (0 when none wait).",
            [],
        )
        lag.add_metric([], ingest.commit_lag(now) if ingest is not None else 0.0)
        yield lag

        # Drift.
        score = gauge(
            "drift_score",
            "Newest drift of a model version in a device group: what its policy's drift trigger watches "
            "(the input drift, psi_confidence, without one).",
            ["model", "version", "group"],
        )
        threshold = gauge(
            "drift_threshold",
            "The drift trigger's threshold for that version and group (absent without a drift trigger).",
            ["model", "version", "group"],
        )
        statistic = gauge(
            "drift_statistic",
            "Each drift statistic of the newest score.",
            ["model", "version", "group", "statistic"],
        )
        from cloud_registry.drift import trigger_value

        for row in drift_rows:
            name, policy = drift_models[row.model_id]
            labels = [name, str(row.model_version), row.device_group]
            trigger = policy.triggers.drift if policy is not None else None
            applies = trigger is not None and (not policy.groups or row.device_group in policy.groups)
            score.add_metric(labels, trigger_value(row, trigger) if applies else row.score)
            if applies:
                threshold.add_metric(labels, trigger.threshold)
            for stat in ("psi_confidence", "psi_class", "mean_shift_z"):
                statistic.add_metric([*labels, stat], getattr(row, stat))
        yield from (score, threshold, statistic)

        # Retraining jobs.
        family = gauge("retraining_jobs", "Retraining jobs by state.", ["state"])
        for state in ("queued", "running", "succeeded", "rejected", "failed", "cancelled"):
            family.add_metric([state], jobs.get(state, 0))
        yield family

        # Webhook deliveries.
        family = gauge(
            "webhook_deliveries", "Webhook deliveries by state (kept 7 days once delivered).", ["state"]
        )
        for state, count in sorted(deliveries.items()):
            family.add_metric([state], count)
        yield family

        if settings.metrics_per_device:
            online = gauge("device_online", "1 while the device is online (metrics_per_device).", ["device"])
            p95 = gauge(
                "device_latency_p95_ms", "The device's last reported p95 inference latency.", ["device"]
            )
            for name, is_online, latency in per_device:
                online.add_metric([name], is_online)
                if latency is not None:
                    p95.add_metric([name], latency)
            yield from (online, p95)


def _failed_updates(session: Session) -> int:
    """Updates that ever ended failed, rolled back or refused, one per (device, update id): a count that
    only grows (update statuses are never deleted), read from the shared database, so every replica
    serves the same figure and `increase()` sees each new failure even while another device recovers."""
    e = m.UpdateEvent
    failed = (
        select(e.device_id, e.update_id)
        .where(e.state.in_(sorted(FAILED_UPDATE_STATES)))
        .distinct()
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(failed)) or 0)


def _webhook_counts(session: Session) -> dict[str, int]:
    from cloud_registry.webhooks import delivery_counts

    return delivery_counts(session)


def exposition(registry: Registry) -> bytes:
    """The whole scrape in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(RegistryCollector(registry))  # type: ignore[arg-type]
    return generate_latest(collectors)
