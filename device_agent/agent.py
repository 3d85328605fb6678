"""The running agent: serves the active slot's model and runs the update machine, telemetry and the APIs.

Threads: the HTTP server (one thread per connection), paho's network thread
and the outbox publisher (mqtt_link), the update machine, the registry loop
(polls the desired version, posts update statuses over HTTP while MQTT is
down), the telemetry loop and, when configured, the input loop. They share
the served `Pipeline` by reference: swapping in a new model is one
assignment, and requests in flight finish on the model they started with.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent import agent_version
from device_agent.config import AgentConfig
from device_agent.errors import AgentError
from device_agent.identity import resolve_identity
from device_agent.metrics import InferenceMetrics
from device_agent.outbox import Outbox
from device_agent.pipeline import Pipeline
from device_agent.registry_client import RegistryClient, RegistryError
from device_agent.runtimes import SessionOptions
from device_agent.samples import SampleUploader
from device_agent.state import AgentPaths, AgentState, Slot, StateStore, UpdateRecord
from device_agent.status import AgentStatus, prometheus_lines, status_of
from device_agent.update import Updater
from edgebundle import BundleError, verify_bundle
from edgewire import Paths, Presence, SystemStats, Telemetry, Topics, UpdateStatus
from edgewire.messages import dump_payload

if TYPE_CHECKING:  # imported when the agent opens: it reads /proc
    from device_agent.system import SystemProbe

log = logging.getLogger(__name__)


def acquire_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentError(
            f"another edgectl-agent process is using {path.parent}",
            hint="stop it first (systemctl stop edgectl-agent), or give this one another data_dir",
        ) from None
    return fd


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.paths = AgentPaths(config.data_dir)
        self.identity, self.keys = resolve_identity(config)
        self.topics = Topics(self.identity.fleet, self.identity.device)
        self.metrics = InferenceMetrics()
        self.pipeline: Pipeline | None = None
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._wake_registry = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_fd: int | None = None
        self.link = None
        self.http = None
        self.registry: RegistryClient | None = None
        self.outbox: Outbox | None = None
        self.updater: Updater | None = None
        self.probe: SystemProbe | None = None  # /proc readings; opened with the agent
        self.samples = SampleUploader(
            fleet=self.identity.fleet, device=self.identity.device, allowed=config.telemetry.sample_upload
        )

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Lock the data folder, read the state, resume or break an interrupted update (no serving yet)."""
        try:
            self.paths.create()
        except OSError as exc:
            raise AgentError(
                f"cannot create data_dir {self.paths.root}: {exc.strerror or exc}",
                hint="create it and give the agent's user write access",
            ) from None
        self._lock_fd = acquire_lock(self.paths.lock)
        self.outbox = Outbox(self.paths.outbox, self.config.telemetry.queue_max_messages)
        registry = self.config.registry
        if registry is not None:
            self.registry = RegistryClient(
                registry.url, self.identity.token, registry.timeout_s, registry.ca_file
            )
        store = StateStore(self.paths.state_file)
        self.updater = Updater(
            config=self.config,
            device=self.identity.device,
            keys=self.keys,
            paths=self.paths,
            store=store,
            state=store.load(),
            registry=self.registry,
            report=self._report_update,
            load_slot=self.load_slot,
            serve=self._serve,
            restore=self.serve_active,
        )
        self.updater.resume()

    @property
    def state(self) -> AgentState:
        assert self.updater is not None
        return self.updater.state

    def load_slot(self, slot: Slot) -> Pipeline:
        """Verify a slot's bundle (signature, every file) with the pinned key, and load its model."""
        info = self.state.slots.get(slot)
        if info is None:
            raise AgentError(f"slot {slot} is empty")
        if info.key_id is None:
            keys = list(self.keys.bundle.values())
        elif info.key_id in self.keys.bundle:
            keys = [self.keys.bundle[info.key_id]]
        else:
            raise AgentError(f"slot {slot} is signed by key {info.key_id}, which this device no longer pins")
        folder = self.paths.slot(slot)
        manifest = None
        for key in keys:
            try:
                manifest = verify_bundle(folder, key)
                break
            except BundleError:
                if key is keys[-1]:
                    raise
        assert manifest is not None
        if (manifest.name, manifest.version) != (info.name, info.version):
            raise AgentError(f"slot {slot} holds {manifest.name} v{manifest.version}, not v{info.version}")
        options = SessionOptions(
            threads=self.config.inference.threads,
            providers=self.config.inference.providers,
            cache_dir=self.paths.engines,
        )
        telemetry = self.config.telemetry
        return Pipeline(
            folder,
            manifest,
            slot,
            options,
            self.metrics,
            drift=telemetry.drift,
            drift_per_s=telemetry.drift_samples_per_s,
        )

    def _serve(self, pipeline: Pipeline | None) -> None:
        self.samples.attach(pipeline)
        self.pipeline = pipeline
        if pipeline is not None:
            ref = pipeline.model_ref
            log.info("serving %s v%d from slot %s", ref.name, ref.version, ref.slot)
        if self.link is not None:
            self.link.refresh_presence()

    def serve_active(self) -> None:
        """Serve the active slot (verified on load); if it no longer verifies, fall back to the previous one."""
        assert self.updater is not None
        state = self.state
        active = state.active
        if active is None:
            self._serve(None)
            return
        info = state.slots.get(active)
        wanted = (active, info.name, info.version) if info is not None else None
        serving = self.pipeline.model_ref if self.pipeline is not None else None
        if serving is not None and (serving.slot, serving.name, serving.version) == wanted:
            return  # already serving it
        try:
            self._serve(self.load_slot(active))
            return
        except (AgentError, BundleError, OSError) as exc:
            log.error("the active slot %s does not verify or load: %s", active, exc)
        previous = state.previous
        if previous and previous != active and state.slots.get(previous) is not None:
            try:
                pipeline = self.load_slot(previous)
            except (AgentError, BundleError, OSError) as exc:
                log.error("the previous slot %s does not verify or load either: %s", previous, exc)
            else:
                self.updater.fall_back(previous)
                self._serve(pipeline)
                return
        self._serve(None)

    # ------------------------------------------------------------------ reports and telemetry

    def _enqueue(self, kind: str, message: type, **fields) -> None:
        """Queue a message of `kind` on disk with its envelope (msg_id, seq, sent_at), then wake the transports."""
        assert self.outbox is not None
        envelope = {"fleet": self.identity.fleet, "device": self.identity.device}

        def build(msg_id: str, seq: int) -> bytes:
            return dump_payload(message(**envelope, msg_id=msg_id, seq=seq, sent_at=time.time(), **fields))

        self.outbox.enqueue(kind, build)
        if self.link is not None:
            self.link.wake()
        self._wake_registry.set()

    def _report_update(self, record: UpdateRecord) -> None:
        desired = record.desired
        self._enqueue(
            "update",
            UpdateStatus,
            update_id=record.update_id,
            rollout_id=desired.rollout_id,
            model=desired.model,
            from_version=record.from_version if record.from_model == desired.model else None,
            to_version=desired.version,
            state=record.state,
            reason=record.reason,
            slot=record.slot,
        )

    def presence(self, state: str, session: int) -> Presence:
        pipeline = self.pipeline
        return Presence(
            fleet=self.identity.fleet,
            device=self.identity.device,
            state=state,  # type: ignore[arg-type]
            session=session,
            at=time.time(),
            agent_version=agent_version(),
            model=pipeline.model_ref if pipeline else None,
        )

    def send_telemetry(self) -> None:
        assert self.outbox is not None
        stats, elapsed = self.metrics.take_interval()
        pipeline = self.pipeline
        drift = pipeline.take_drift() if pipeline else None
        system = self.probe.sample() if self.probe is not None else SystemStats()
        self._enqueue(
            "telemetry",
            Telemetry,
            interval_s=round(elapsed, 3),
            model=pipeline.model_ref if pipeline else None,
            inference=stats,
            system=system,
            drift=drift,
            queue=self.outbox.stats(),  # before enqueue: the outbox lock is held while the payload is built
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.config.telemetry.interval_s):
            try:
                self.send_telemetry()
            except Exception:
                log.exception("telemetry failed")

    def _registry_loop(self) -> None:
        """Poll the desired version; while MQTT is down (or absent), post queued messages over HTTP."""
        assert self.registry is not None and self.updater is not None and self.config.registry is not None
        settings = self.config.registry
        next_poll = 0.0
        last_problem = None
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + settings.poll_interval_s
                    desired = self.registry.desired()
                    if desired is not None:
                        self.updater.offer(desired)
                    self.samples.configure(self.registry.device_config().samples, self.pipeline)
                if self.samples.due(time.time()):
                    self.samples.upload(self.registry.post_samples)
                self._post_fallback(settings.http_fallback_after_s)
                last_problem = None
            except RegistryError as exc:
                if str(exc) != last_problem:
                    log.warning("registry: %s", exc)
                last_problem = str(exc)
            self._wake_registry.wait(min(0.5, settings.poll_interval_s))
            self._wake_registry.clear()

    def _post_fallback(self, after_s: float) -> None:
        assert self.outbox is not None and self.registry is not None
        if self.link is not None and self.link.down_for() < after_s:
            return
        routes = {"update": Paths.update}
        if self.link is None:  # no broker at all: HTTP carries telemetry too
            routes["telemetry"] = Paths.telemetry
        for kind, path in routes.items():
            sent = []
            for message in self.outbox.peek(kind=kind, limit=50):
                if not self.registry.post(path, message.payload):
                    break
                sent.append(message.id)
            self.outbox.delete(sent)

    # ------------------------------------------------------------------ status

    def status(self) -> AgentStatus:
        return status_of(self)

    def prometheus(self) -> list[str]:
        return prometheus_lines(self)

    # ------------------------------------------------------------------ life cycle

    def _thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self) -> None:
        from device_agent.http_api import AgentHttpServer
        from device_agent.input_loop import InputLoop, check_input_config
        from device_agent.mqtt_link import MqttLink

        if self.config.input is not None:
            check_input_config(self.config.input)
        self.open()
        assert self.updater is not None and self.outbox is not None
        self.serve_active()
        if self.config.http.enabled:
            http = self.config.http
            try:
                self.http = AgentHttpServer(http.host, http.port, self, http.max_request_bytes)
            except OSError as exc:
                raise AgentError(
                    f"cannot listen on {http.host}:{http.port}: {exc.strerror or exc}",
                    hint="pick another http.port, or stop what uses it",
                ) from None
            self.http.start()
            log.info("HTTP API on http://%s:%d", http.host, self.http.port)
            if http.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the HTTP API has no authentication and listens beyond loopback (%s)", http.host)
        if self.identity.broker is not None:
            self.link = MqttLink(
                self.identity.broker, self.topics, self.outbox, self.presence, self.updater.offer
            )
            self.link.start()
        if self.config.telemetry.system:
            from device_agent.system import SystemProbe

            self.probe = SystemProbe()
        self._thread(self.updater.run, "update")
        if self.registry is not None:
            self._thread(self._registry_loop, "registry")
        if self.link is not None or self.registry is not None:
            self._thread(self._telemetry_loop, "telemetry")
        else:
            log.info("no broker and no registry configured: telemetry is off")
        if self.config.input is not None:
            loop = InputLoop(self.config.input, lambda: self.pipeline, self._stop)
            loop.start()
            self._threads.append(loop.thread)

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def close(self) -> None:
        """Stop everything: updates pause (they resume on the next start), queued messages get a moment."""
        self._stop.set()
        if self.updater is not None:
            self.updater.stop()
        self._wake_registry.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.link is not None:
            self.link.stop(flush_s=2.0)
        if self.http is not None:
            self.http.stop()
        if self.probe is not None:
            self.probe.close()
        if self.registry is not None:
            self.registry.close()
        if self.outbox is not None:
            self.outbox.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
