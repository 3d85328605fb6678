"""Webhooks: the registry tells Slack (or anything that takes a JSON POST) what happened to the fleet.

Events (`EVENTS`): a rollout halted, completed or rolled back; a version's drift crossed its policy's
threshold; a retraining job succeeded, was rejected or failed; a device was revoked.

Durable and never in the way:

- `enqueue()` writes one `WebhookDelivery` row per configured URL in the session of the change it
  reports, so an event is sent exactly when its change commits (an outbox): a change rolled back sends
  nothing, a registry that restarts sends what it had not. The URLs ride on the session factory's
  `info` (`Registry` sets them), so the code that makes an event needs no settings.
- `Deliverer` sends on threads of its own, one per URL, so a dead or slow receiver delays only its own
  events; the API, the reconciler and ingest never wait on a receiver. Per URL the events go in the order
  they were made: a later one waits while an earlier one is retried (exponential backoff from
  `webhook_backoff_s` to `webhook_backoff_max_s`), and after `webhook_max_attempts` the earlier one is
  marked failed and the next goes. A lease on the row keeps two replicas from sending it twice.
- What is pending or gave up is listed by `GET /api/v1/webhooks/deliveries` and counted on `/metrics`
  (`edgectl_registry_webhook_deliveries{state}`).

The body is JSON with a Slack-compatible `text` (one line for people), and `id`, `event`, `at`, `data`
for programs. It is signed: `X-Edgectl-Timestamp` (Unix seconds) and
`X-Edgectl-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, keyed with webhook_secret>`; a
receiver recomputes it over the raw body and refuses a stale timestamp (replays). The secret never
reaches a log; a receiver's answer is logged by its status only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import models as m

log = logging.getLogger("cloud_registry.webhooks")

Event = Literal[
    "rollout.halted",
    "rollout.completed",
    "rollout.rolled_back",
    "drift.above_policy",
    "job.succeeded",
    "job.rejected",
    "job.failed",
    "device.revoked",
]
EVENTS: tuple[str, ...] = Event.__args__  # type: ignore[attr-defined]
STATES = ("pending", "delivered", "failed")
URLS_INFO = "webhook_urls"  # the session factory's info key: where enqueue finds the URLs
KEEP_DELIVERED_S = 7 * 86400  # a delivered row is kept a week after it arrived
KEEP_FAILED_S = 30 * 86400  # a failed one a month after its last attempt, for an operator to retry
LEASE_S = 60.0
MAX_TEXT = 3000


def configure(factory: sessionmaker[Session], urls: list[str]) -> None:
    """Make every session of `factory` enqueue events for these URLs (none: events are not kept)."""
    factory.configure(info={URLS_INFO: list(urls)})


def enqueue(session: Session, *, event: str, text: str, data: dict[str, Any]) -> int:
    """Queue `event` for every configured URL in this session's transaction; the number of rows."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    urls = session.info.get(URLS_INFO) or []
    if not urls:
        return 0
    now = time.time()
    event_id = uuid.uuid4().hex
    body = {"id": event_id, "event": event, "at": now, "text": text[:MAX_TEXT], "data": data}
    for url in urls:
        session.add(
            m.WebhookDelivery(
                event_id=event_id,
                event=event,
                url=url,
                body=body,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return len(urls)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def delivery_counts(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    query = select(m.WebhookDelivery.state, func.count()).group_by(m.WebhookDelivery.state)
    for state, count in session.execute(query):
        counts[state] = count
    return counts


def deliveries(session: Session, *, state: str | None = None, limit: int = 100) -> list[m.WebhookDelivery]:
    query = select(m.WebhookDelivery).order_by(m.WebhookDelivery.id.desc()).limit(limit)
    if state is not None:
        query = query.where(m.WebhookDelivery.state == state)
    return list(session.scalars(query))


def retry(session: Session, *, delivery_id: int) -> m.WebhookDelivery:
    """Send a delivery that gave up again from its first attempt (it goes before the URL's later events)."""
    from cloud_registry.crud import Conflict, NotFound

    row = session.get(m.WebhookDelivery, delivery_id)
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    if row.state != "failed":
        raise Conflict(f"webhook delivery {delivery_id} is {row.state}; only a failed one is retried")
    row.state, row.attempts, row.next_attempt_at, row.lease_until = "pending", 0, time.time(), None
    return row


class Deliverer:
    """One thread per URL sending its pending deliveries in order."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        urls: list[str],
        secret: bytes,
        timeout_s: float,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
        poll_s: float = 0.5,
    ) -> None:
        self.factory, self.urls, self.secret = factory, list(urls), secret
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.backoff_s, self.backoff_max_s, self.poll_s = backoff_s, backoff_max_s, poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url,), name=f"webhook-{i}", daemon=True)
            for i, url in enumerate(self.urls)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def wake(self) -> None:
        """Look for new events now rather than at the next poll."""
        self._wake.set()

    def _run(self, url: str) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    sent = self._once(client, url)
                except Exception:  # the database away for a moment: try again at the next poll
                    log.exception("webhook delivery loop failed; retrying")
                    sent = False
                if not sent:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()

    def _claim(self, url: str) -> m.WebhookDelivery | None:
        """The URL's oldest pending delivery when it is due, leased to this thread; None otherwise."""
        now = time.time()
        with self.factory() as session, session.begin():
            row = session.scalar(
                select(m.WebhookDelivery)
                .where(m.WebhookDelivery.url == url, m.WebhookDelivery.state == "pending")
                .order_by(m.WebhookDelivery.id)
                .limit(1)
            )
            if row is None or row.next_attempt_at > now:
                return None  # the oldest waits for its backoff: the later ones wait behind it
            claimed = session.execute(
                update(m.WebhookDelivery)
                .where(
                    m.WebhookDelivery.id == row.id,
                    m.WebhookDelivery.state == "pending",
                    (m.WebhookDelivery.lease_until.is_(None)) | (m.WebhookDelivery.lease_until < now),
                )
                .values(lease_until=now + max(LEASE_S, 2 * self.timeout_s))
            ).rowcount
            if claimed != 1:
                return None  # another replica is sending it
            session.expunge(row)
            return row

    def _once(self, client, url: str) -> bool:  # type: ignore[no-untyped-def]
        """Try the URL's oldest due delivery; True when one was attempted (look again at once)."""
        row = self._claim(url)
        if row is None:
            self._prune()
            return False
        body = json.dumps(row.body, separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "edgectl-registry",
            "X-Edgectl-Event": row.event,
            "X-Edgectl-Delivery": row.event_id,
            "X-Edgectl-Timestamp": timestamp,
            "X-Edgectl-Signature": sign(self.secret, timestamp, body),
        }
        error = None
        try:
            response = client.post(url, content=body, headers=headers)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except Exception as exc:  # refused, timed out, reset: the receiver is away
            error = type(exc).__name__
        now = time.time()
        with self.factory() as session, session.begin():
            current = session.get(m.WebhookDelivery, row.id)
            if current is None:
                return True
            current.attempts += 1
            current.lease_until = None
            if error is None:
                current.state, current.delivered_at, current.last_error = "delivered", now, None
            else:
                current.last_error = error
                if current.attempts >= self.max_attempts:
                    current.state, current.next_attempt_at = "failed", now  # the last attempt: prune's clock
                    log.warning(
                        "webhook %s (%s) to %s failed %d times (%s); gave up",
                        current.event_id,
                        current.event,
                        _host(url),
                        current.attempts,
                        error,
                    )
                else:
                    delay = min(self.backoff_s * 2 ** (current.attempts - 1), self.backoff_max_s)
                    current.next_attempt_at = now + delay
        return True

    def _prune(self) -> None:
        with self.factory() as session, session.begin():
            prune(session, now=time.time())


def prune(session: Session, *, now: float) -> int:
    """Delete what no one will send again: delivered rows older than KEEP_DELIVERED_S, and failed rows
    whose last attempt is older than KEEP_FAILED_S (a retry makes the row pending, and its clock starts
    again). Pending rows are kept whatever their age. Returns how many rows went."""
    table = m.WebhookDelivery.__table__
    delivered = session.execute(
        table.delete().where(
            m.WebhookDelivery.state == "delivered", m.WebhookDelivery.delivered_at < now - KEEP_DELIVERED_S
        )
    ).rowcount
    failed = session.execute(
        table.delete().where(
            m.WebhookDelivery.state == "failed", m.WebhookDelivery.next_attempt_at < now - KEEP_FAILED_S
        )
    ).rowcount
    return delivered + failed


def _host(url: str) -> str:
    """The URL's host alone for logs: a Slack webhook's path is its secret."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"
