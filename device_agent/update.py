"""The OTA update lifecycle on the device: what each state does, moved along the contract's one table.

The states, their facts (final, failed, risky, supersedable) and the table of (state, event) -> state
are the wire contract's (`edgewire.update_states`, drawn there); this module holds the behaviour: one
action per working state (`ACTIONS`), and the state persisted on entering every state.

Over 400 lines on purpose: the machine is one `Updater`, read top to bottom in the order an update
runs (offers, the loop, then one short action per state that returns its event). The actions share
its lock, its persisted state and its stop and cancel events, and the kill tests pin what each one
leaves on disk; split across modules, the order of a state's disk changes would no longer be seen
in one place.

What each state does, and what a kill there leaves:
- QUEUED: checks what the desired message says (target, size cap, version or
  a signed rollback order). Nothing on disk but the state.
- DOWNLOADING: the archive grows in downloads/ (resumable); only a complete
  file with the right sha256 gets its final name.
- VERIFYING: the signed bundle is extracted and verified into slots/incoming
  (by edgebundle: signature with the pinned key its manifest names, every
  file's sha256, no extra file, safe paths, size cap); then target, name,
  version and runtime are checked. Redone from scratch after a kill.
- INSTALLING: the inactive slot is marked empty in the state, removed, and
  slots/incoming renamed onto it. Redone after a kill.
- HEALTHCHECK: the new slot is verified again, loaded beside the model that
  serves, and checked (`health.check_health`), optionally served for a
  probation period; then one atomic write of state.json makes it the active
  slot and the update SUCCEEDED. The model served until then never stopped.
- A kill in VERIFYING, INSTALLING or HEALTHCHECK counts a restart; after
  `crash_loop_limit` restarts in the same state the update is failed or rolled
  back instead of tried again: a model that crashes the agent cannot loop it.

Every transition is reported as an UpdateStatus through the outbox (MQTT,
with HTTP as fallback), after the state is persisted; a kill between the two
is caught on restart by the record's `reported` flag.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent import faults
from device_agent.download import DownloadCancelled, Downloader, DownloadError, DownloadPolicy, archive_paths
from device_agent.errors import AgentError
from device_agent.persist import remove_temporaries
from device_agent.state import AgentPaths, AgentState, Slot, SlotInfo, StateStore, UpdateRecord
from edgebase.durable import fsync_dir, remove_tree
from edgebundle import BundleError, open_verified, read_manifest
from edgewire import DesiredModel
from edgewire.commands import RollbackRefused, verify_rollback
from edgewire.update_states import (
    FINAL_UPDATE_STATES,
    IDLE,
    IDLE_STATES,
    RISKY_UPDATE_STATES,
    SUPERSEDABLE_UPDATE_STATES,
    UPDATE_TRANSITIONS,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from device_agent.config import AgentConfig
    from device_agent.pipeline import Pipeline
    from device_agent.registry_client import RegistryClient

log = logging.getLogger(__name__)

# What the agent does in each working state: the name of the Updater method that decides its event.
ACTIONS: dict[str, str] = {
    "QUEUED": "_check_desired",
    "DOWNLOADING": "_download",
    "VERIFYING": "_verify",
    "INSTALLING": "_install",
    "HEALTHCHECK": "_healthcheck",
}


def next_state(state: str, event: str) -> str:
    try:
        return UPDATE_TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"update machine: no transition from {state} on {event}") from None


@dataclass(frozen=True)
class Outcome:
    """What a state's action decided: the event, why, and how the persisted state changes with it."""

    event: str
    reason: str | None = None
    change: Callable[[AgentState], None] | None = None
    then: Callable[[], None] | None = None  # in memory, once the new state is on disk (serve the new model)


@dataclass(frozen=True)
class Keys:
    bundle: dict[str, Ed25519PublicKey]  # key id -> pinned bundle-signing key
    commands: list[Ed25519PublicKey]  # keys whose rollback orders this device obeys


class Updater:
    """Runs the machine in one thread; `offer` (any thread) hands it desired versions."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        device: str,
        keys: Keys,
        paths: AgentPaths,
        store: StateStore,
        state: AgentState,
        registry: RegistryClient | None,
        report: Callable[[UpdateRecord], None],
        load_slot: Callable[[Slot], Pipeline],
        serve: Callable[[Pipeline | None], None],
        restore: Callable[[], None],
    ) -> None:
        self.config = config
        self.device = device
        self.keys = keys
        self.paths = paths
        self.store = store
        self.state = state
        self.registry = registry
        self._report = report
        self._load_slot = load_slot
        self._serve = serve
        self._restore = restore
        self.lock = threading.RLock()  # guards self.state for readers (status page)
        self._offers: list[tuple[DesiredModel, str | None]] = []
        self._offered = threading.Condition()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._actions: dict[str, Callable[[UpdateRecord], Outcome]] = {
            state: getattr(self, method) for state, method in ACTIONS.items()
        }

    # ------------------------------------------------------------------ state and reports

    @property
    def record(self) -> UpdateRecord | None:
        return self.state.update

    @property
    def current_state(self) -> str:
        return self.record.state if self.record else IDLE

    def _save(self) -> None:
        with self.lock:
            self.store.save(self.state)

    def _report_current(self) -> None:
        record = self.record
        if record is None or record.reported:
            return
        if record.report:
            self._report(record)
        with self.lock:
            record.reported = True
        self._save()

    def fire(self, outcome: Outcome) -> str:
        """Apply one transition: new state persisted (with its disk changes), then reported."""
        record = self.record
        assert record is not None
        new = next_state(record.state, outcome.event)
        with self.lock:  # readers (the status page) see the new state and the model it serves together
            if outcome.change is not None:
                outcome.change(self.state)
            self.state.update = record.model_copy(
                update={
                    "state": new,
                    "reason": outcome.reason[:500] if outcome.reason else None,
                    "resumes": 0,
                    "entered_at": time.time(),
                    "reported": False,
                }
            )
            self._save()
            if outcome.then is not None:
                outcome.then()
        log.info(
            "update %s: %s -> %s%s",
            record.update_id,
            record.state,
            new,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        self._report_current()
        faults.crash_point(f"enter:{new}")
        if new == "ROLLED_BACK":
            self._restore()
        if new in FINAL_UPDATE_STATES:
            self._clean_up(record)
        return new

    def _start(
        self, desired: DesiredModel, local_source: str | None, event: str, reason: str | None = None
    ) -> None:
        self._cancel.clear()
        with self.lock:
            active = self.state.active
            serving = self.state.serving_info()
            self.state.update = UpdateRecord(
                update_id=desired.update_id,
                desired=desired,
                state=self.current_state,
                slot="b" if active == "a" else "a",
                from_model=serving.name if serving else None,
                from_version=serving.version if serving else None,
                local_source=local_source,
            )
        self.fire(Outcome(event, reason))

    # ------------------------------------------------------------------ offers

    def offer(self, desired: DesiredModel, local_source: str | None = None) -> None:
        """A desired version from MQTT, the poller or the CLI; the machine thread decides what to do."""
        with self._offered:
            self._offers = [(d, s) for d, s in self._offers if d.update_id != desired.update_id]
            self._offers.append((desired, local_source))
            record = self.record
            if (
                record is not None
                and record.state in SUPERSEDABLE_UPDATE_STATES
                and self._supersedes(desired, record)
            ):
                self._cancel.set()
            self._offered.notify_all()

    @staticmethod
    def _supersedes(desired: DesiredModel, record: UpdateRecord) -> bool:
        """A different update issued no earlier than this one (a lagging poll must not cancel a newer one)."""
        return desired.update_id != record.update_id and desired.issued_at >= record.desired.issued_at

    def _take_offer(self, timeout: float) -> tuple[DesiredModel, str | None] | None:
        with self._offered:
            if not self._offers:
                self._offered.wait(timeout)
            if not self._offers:
                return None
            newest = self._offers[-1]  # the newest wins; older ones are stale
            self._offers.clear()
            return newest

    def _newer_offer_waiting(self, record: UpdateRecord) -> bool:
        with self._offered:
            return any(self._supersedes(d, record) for d, _ in self._offers)

    def _consider(self, desired: DesiredModel, local_source: str | None) -> None:
        last = self.record
        if (
            last is not None
            and last.local_source is None  # a local install says nothing about the registry's order
            and last.update_id != desired.update_id
            and desired.issued_at < last.desired.issued_at
        ):
            return  # older than the registry's update we last ran: stale
        if last is not None and last.update_id == desired.update_id and last.state in FINAL_UPDATE_STATES:
            retry_failed = time.time() - last.entered_at >= self.config.update.retry_failed_after_s
            if last.state != "FAILED" or not retry_failed:
                return  # done with this update (a retained or polled message repeats it)
        serving = self.state.serving_info()
        if serving is not None and (serving.name, serving.version) == (desired.model, desired.version):
            self._start(desired, local_source, "already_serving", "this version is already active")
            return
        self._start(desired, local_source, "desired")

    # ------------------------------------------------------------------ the loop

    def resume(self) -> None:
        """At start-up, before serving: count a restart in a risky state, and break a crash loop."""
        record = self.record
        if record is None:
            return
        if record.state in RISKY_UPDATE_STATES:
            with self.lock:
                record.resumes += 1
            self._save()
            if record.resumes >= self.config.update.crash_loop_limit:
                self.fire(
                    Outcome("crash_loop", f"the agent restarted {record.resumes} times during {record.state}")
                )
                return
        self._report_current()
        if record.state in FINAL_UPDATE_STATES:
            self._clean_up(record)

    def fall_back(self, slot: Slot) -> None:
        """The active slot no longer verifies: make `slot` (the one served before) active again."""
        with self.lock:
            log.error("falling back from slot %s to slot %s", self.state.active, slot)
            self.state.active, self.state.previous = slot, None
        self._save()

    def stop(self) -> None:
        self._stop.set()
        self._cancel.set()
        with self._offered:
            self._offered.notify_all()

    def run(self) -> None:
        while not self._stop.is_set():
            record = self.record
            if record is None or record.state in IDLE_STATES:
                offer = self._take_offer(timeout=1.0)
                if offer is not None and not self._stop.is_set():
                    self._consider(*offer)
                continue
            if record.state in SUPERSEDABLE_UPDATE_STATES and self._newer_offer_waiting(record):
                self._cancel.clear()
                self.fire(Outcome("superseded", "a newer desired version arrived"))
                continue
            outcome = self._step(record)
            if outcome.event == "stopping":
                return
            try:
                self.fire(outcome)
            except Exception:  # the state could not be written (disk full, read-only): retry, never die
                log.exception("update %s: cannot record %s; retrying", record.update_id, outcome.event)
                self._stop.wait(5.0)

    def _step(self, record: UpdateRecord) -> Outcome:
        try:
            return self._actions[record.state](record)
        except Exception as exc:  # a bug or an I/O fault: end the update, never leave it half-done
            log.exception("update %s: %s failed unexpectedly", record.update_id, record.state)
            event = "unhealthy" if record.state == "HEALTHCHECK" else "failed"
            return Outcome(event, f"{type(exc).__name__}: {str(exc)[:300]}")

    def run_until_idle(self) -> str:
        """Run the machine in this thread until the update is over (the `install` command)."""
        while self.current_state not in IDLE_STATES:
            assert self.record is not None
            self.fire(self._step(self.record))
        return self.current_state

    # ------------------------------------------------------------------ actions

    def _check_desired(self, record: UpdateRecord) -> Outcome:
        desired = record.desired
        target = self.config.device.target
        if desired.target != target:
            return Outcome("rejected", f"the update is for target {desired.target}; this device is {target}")
        cap = self.config.update.max_archive_bytes
        if desired.archive_size > cap:
            return Outcome(
                "rejected", f"the archive has {desired.archive_size} bytes, over this device's cap of {cap}"
            )
        problem = self._version_problem(desired.model, desired.version, desired)
        if problem:
            return Outcome("rejected", problem)
        if record.local_source is None:
            if self.registry is None:
                return Outcome("failed", "no registry is configured to download from")
            try:
                self.registry.resolve(desired.url)
            except Exception as exc:
                return Outcome("rejected", str(exc))
        return Outcome("accepted")

    def _version_problem(self, model: str, version: int, desired: DesiredModel) -> str | None:
        highest = self.state.max_versions.get(model, 0)
        if version >= highest:
            return None
        if desired.rollback is None:
            return (
                f"version {version} is older than v{highest}, the newest installed here, "
                "and no signed rollback order came with it"
            )
        try:
            verify_rollback(
                desired.rollback, self.keys.commands, device=self.device, model=model, version=version
            )
        except RollbackRefused as exc:
            return f"rollback refused: {exc}"
        return None

    def _archive(self, record: UpdateRecord) -> Path:
        if record.local_source is not None:
            return Path(record.local_source)
        return archive_paths(self.paths.downloads, record.desired.archive_sha256)[2]

    def _download(self, record: UpdateRecord) -> Outcome:
        desired = record.desired
        if record.local_source is not None:
            from edgebundle import sha256_file

            try:
                digest = sha256_file(Path(record.local_source))
            except OSError as exc:
                return Outcome("failed", f"cannot read {record.local_source}: {exc.strerror or exc}")
            if digest != desired.archive_sha256:
                return Outcome("failed", "the archive changed since the install started")
            return Outcome("downloaded")
        update = self.config.update
        policy = DownloadPolicy(update.download_attempts, update.backoff_initial_s, update.backoff_max_s)
        downloader = Downloader(self.registry, self.paths.downloads, policy, self._cancel)  # type: ignore[arg-type]
        while True:
            try:
                downloader.fetch(desired.url, desired.archive_sha256, desired.archive_size)
                return Outcome("downloaded")
            except DownloadCancelled:
                if self._stop.is_set():
                    return Outcome("stopping")
                if self._newer_offer_waiting(record):
                    return Outcome("superseded", "a newer desired version arrived")
                self._cancel.clear()  # a stale cancel: the offer that set it was handled already
            except DownloadError as exc:
                return Outcome("failed", str(exc))

    def _verify(self, record: UpdateRecord) -> Outcome:
        archive = self._archive(record)
        if not archive.is_file():
            return Outcome("failed", "the downloaded archive is missing")
        staging = self.paths.staging
        remove_tree(staging)
        remove_temporaries(self.paths.slots)
        try:
            claimed = read_manifest(archive)  # unverified: only to pick the pinned key it names
        except BundleError as exc:
            return Outcome("rejected", str(exc))
        if claimed.key_id is not None:
            key = self.keys.bundle.get(claimed.key_id)
            if key is None:
                return Outcome(
                    "rejected",
                    f"the bundle is signed by key {claimed.key_id}, which this device does not pin",
                )
            candidates = [key]
        else:
            candidates = list(self.keys.bundle.values())
        manifest = None
        error: BundleError | None = None
        for key in candidates:
            try:
                manifest = open_verified(
                    archive, key, staging, max_bytes=self.config.update.max_unpacked_bytes
                )
                break
            except BundleError as exc:
                error = exc
        if manifest is None:
            return Outcome("rejected", str(error))
        faults.crash_point("verifying:extracted")
        desired = record.desired
        problem = None
        if manifest.target != self.config.device.target:
            problem = (
                f"the bundle is for target {manifest.target}; this device is {self.config.device.target}"
            )
        elif (manifest.name, manifest.version) != (desired.model, desired.version):
            problem = (
                f"the archive holds {manifest.name} v{manifest.version}, the update names "
                f"{desired.model} v{desired.version}"
            )
        else:
            problem = self._version_problem(manifest.name, manifest.version, desired)
        if problem is None:
            from device_agent.runtimes import check_available, model_artifact

            try:
                check_available(manifest.runtime)
                model_artifact(manifest)
            except AgentError as exc:
                problem = exc.message
        if problem:
            remove_tree(staging)
            return Outcome("rejected", problem)

        def forget_slot(state: AgentState) -> None:  # the inactive slot is about to be replaced
            state.slots[record.slot] = None
            if state.previous == record.slot:
                state.previous = None

        return Outcome("verified", change=forget_slot)

    def _install(self, record: UpdateRecord) -> Outcome:
        staging, slot_dir = self.paths.staging, self.paths.slot(record.slot)
        if staging.is_dir():
            remove_tree(slot_dir)
            faults.crash_point("installing:slot-removed")
            os.rename(staging, slot_dir)
            fsync_dir(self.paths.slots)
        elif not slot_dir.is_dir():
            return Outcome("failed", "the verified bundle disappeared before it was installed")
        manifest = read_manifest(slot_dir)  # verified again, with the signature, when it is loaded
        info = SlotInfo(
            name=manifest.name,
            version=manifest.version,
            target=manifest.target,
            runtime=manifest.runtime,
            archive_sha256=record.desired.archive_sha256,
            key_id=manifest.key_id,
            installed_at=time.time(),
        )

        def fill_slot(state: AgentState) -> None:
            state.slots[record.slot] = info

        return Outcome("installed", change=fill_slot)

    def _healthcheck(self, record: UpdateRecord) -> Outcome:
        from device_agent.health import check_health

        try:
            pipeline = self._load_slot(record.slot)
        except (AgentError, BundleError) as exc:
            return Outcome("unhealthy", f"the new model does not load: {exc}")
        report = check_health(pipeline, self.config.update.healthcheck_runs)
        faults.crash_point("healthcheck:checked")
        if not report.passed:
            return Outcome("unhealthy", report.reason)
        probation = self.config.update.probation_s
        if probation > 0:
            self._serve(pipeline)
            if self._stop.wait(probation):  # stopping: the next start resumes HEALTHCHECK
                return Outcome("stopping")
        slot = record.slot

        def commit(state: AgentState) -> None:
            state.previous, state.active = state.active, slot
            name, version = pipeline.manifest.name, pipeline.manifest.version
            state.max_versions[name] = max(version, state.max_versions.get(name, 0))

        return Outcome("healthy", report.reason, change=commit, then=lambda: self._serve(pipeline))

    # ------------------------------------------------------------------ after the end

    def _clean_up(self, record: UpdateRecord) -> None:
        remove_tree(self.paths.staging)
        remove_temporaries(self.paths.slots)
        if self.paths.downloads.is_dir():
            for leftover in self.paths.downloads.glob(f"{record.desired.archive_sha256}.*"):
                leftover.unlink(missing_ok=True)


def install_local(updater: Updater, archive: Path) -> UpdateRecord:
    """`edgectl-agent install`: run a local archive through the same machine (not reported to the registry)."""
    from edgebundle import sha256_file

    try:
        manifest = read_manifest(archive)
    except BundleError as exc:
        raise AgentError(f"{archive} is not a readable bundle: {exc.message}", hint=exc.hint) from None
    digest = sha256_file(archive)
    desired = DesiredModel(
        msg_id=digest[:32],
        update_id=f"local-{digest[:16]}",
        issued_at=time.time(),
        model=manifest.name,
        version=manifest.version,
        target=manifest.target,
        archive_sha256=digest,
        archive_size=archive.stat().st_size,
        url=str(archive),
    )
    if updater.record is not None and updater.record.state not in IDLE_STATES:
        raise AgentError(
            f"update {updater.record.update_id} is in progress ({updater.record.state})",
            hint="start the agent (edgectl-agent run) to finish it first",
        )
    updater._consider(desired, str(archive.resolve()))
    updater.run_until_idle()
    assert updater.record is not None
    return updater.record


__all__ = [
    "ACTIONS",
    "Keys",
    "Outcome",
    "Updater",
    "install_local",
]
