"""SIGKILL the agent at every state of the update machine, at random byte offsets of the download, and at
random instants: after each restart it serves a verified model, the old or the new, never a half-written one.

The agent kills itself at a named point (device_agent.faults: a real SIGKILL of the real process, armed
through a file) so that every state is hit for sure; the random kills come from outside.
"""

from __future__ import annotations

import http.client
import random
import signal
import time

import numpy as np
import pytest

from edgebundle import read_manifest, verify_bundle
from tests.device_agent.bundles import classifier_bundle, expected_logits
from tests.device_agent.harness import wait_for, write_agent
from tests.device_agent.test_bundle_faults import break_signature, repack
from tests.device_agent.test_updates import ALL_STATES, X

FINAL = ("SUCCEEDED", "FAILED", "ROLLED_BACK", "REJECTED")


class Device:
    """One agent process that is killed and restarted, and the versions it has been offered."""

    def __init__(self, agent, registry, signing, root) -> None:
        self.agent, self.registry, self.signing, self.root = agent, registry, signing, root
        self.version = 1  # the newest version built so far
        self.serving = 1
        self.public_key = signing.private.public_key()

    def bundle(self, **kwargs):
        self.version += 1
        return classifier_bundle(self.root / f"v{self.version}", self.signing.private, self.version, **kwargs)

    def killed(self) -> None:
        assert self.agent.wait_exit() == -signal.SIGKILL, self.agent.log_tail()

    def restart_until_over(self, update_id: str) -> dict:
        """Restart after each kill until the update is over; then check what is served."""
        while True:
            self.agent.start(wait=False)  # it may die again before it answers (a crash loop)
            try:
                update = wait_for(
                    lambda: self._over(update_id),
                    f"update {update_id} to end",
                    on_timeout=self.agent.log_tail,
                )
                break
            except _Died:
                self.killed()
        wait_for(lambda: self.registry.update_states(update_id)[-1:] == [update["state"]], "the final report")
        self.check_serving(update)
        return update

    def _over(self, update_id: str):
        if not self.agent.alive():
            raise _Died()
        try:
            update = self.agent.status()["update"]
        except (OSError, http.client.HTTPException):
            return None
        return update if update and update["update_id"] == update_id and update["state"] in FINAL else None

    def check_serving(self, update: dict) -> None:
        status = self.agent.status()
        version = status["model"]["version"]
        expected = update["to_version"] if update["state"] == "SUCCEEDED" else self.serving
        assert version == expected, (update, status["model"])
        np.testing.assert_allclose(
            self.agent.infer_tensor(X), expected_logits(X, version), rtol=1e-5, atol=1e-5
        )
        folder = self.agent.setup.data_dir / "slots" / status["active_slot"]
        assert verify_bundle(folder, self.public_key).version == version
        assert read_manifest(folder).version == version
        self.serving = version

    def states(self, update_id: str) -> list[str]:
        """Reported states with repeats collapsed (a kill between persisting and reporting repeats one)."""
        collapsed: list[str] = []
        for state in self.registry.update_states(update_id):
            if not collapsed or collapsed[-1] != state:
                collapsed.append(state)
        return collapsed


class _Died(Exception):
    pass


@pytest.fixture
def device(tmp_path, signing, registry, agents):
    setup = write_agent(
        tmp_path / "agent", [signing.public_path], registry=registry, update={"crash_loop_limit": 3}
    )
    agent = agents(setup)
    dev = Device(agent, registry, signing, tmp_path)
    v1 = classifier_bundle(tmp_path / "v1", signing.private, 1)
    desired = registry.desire(v1)
    assert agent.wait_update(desired.update_id)["state"] == "SUCCEEDED"
    return dev


POINTS = [
    "enter:QUEUED",
    "enter:DOWNLOADING",
    "enter:VERIFYING",
    "verifying:extracted",
    "enter:INSTALLING",
    "installing:slot-removed",
    "enter:HEALTHCHECK",
    "healthcheck:checked",
    "enter:SUCCEEDED",
]


def test_a_kill_at_any_point_of_a_good_update_resumes_it(device):
    for point in POINTS:
        device.agent.arm(point)
        desired = device.registry.desire(device.bundle())
        device.killed()
        assert not device.agent.setup.crash_file.exists(), f"{point} was not reached"
        update = device.restart_until_over(desired.update_id)
        assert update["state"] == "SUCCEEDED", (point, update)
        assert device.states(desired.update_id) == ALL_STATES, point


def test_a_kill_on_entering_a_final_state_keeps_the_outcome(tmp_path, device):
    unhealthy = device.bundle(health_version=99)
    forged = repack(device.bundle(), tmp_path / "forged", break_signature)
    missing = device.bundle()
    for point, built, fields, final in [
        ("enter:ROLLED_BACK", unhealthy, {}, "ROLLED_BACK"),
        ("enter:REJECTED", forged, {}, "REJECTED"),
        ("enter:FAILED", missing, {"url": "/v1/device/bundles/" + "0" * 64}, "FAILED"),
    ]:
        device.agent.arm(point)
        desired = device.registry.desire(built, **fields)
        device.killed()
        update = device.restart_until_over(desired.update_id)
        assert update["state"] == final, (point, update)
        assert device.states(desired.update_id)[-1] == final


def test_a_crash_loop_during_the_health_check_is_rolled_back(device):
    device.agent.arm("healthcheck:checked*3")  # the new model 'crashes' the agent three starts in a row
    desired = device.registry.desire(device.bundle())
    device.killed()
    update = device.restart_until_over(desired.update_id)
    assert update["state"] == "ROLLED_BACK"
    assert "restarted 3 times during HEALTHCHECK" in update["reason"]
    assert device.agent.starts == 4  # the first run and three restarts, the last of which rolled back


def test_a_kill_at_random_byte_offsets_of_the_download_resumes_where_it_stopped(device):
    rng = np.random.default_rng(2024)
    for _ in range(6):
        built = device.bundle(extra_files={"pad.bin": rng.bytes(300_000)})
        offset = int(rng.integers(1, built.size - 1))
        device.agent.arm(f"download:{offset}")
        desired = device.registry.desire(built)
        device.killed()
        part = device.agent.setup.data_dir / "downloads" / f"{desired.archive_sha256}.part"
        assert part.stat().st_size == offset
        update = device.restart_until_over(desired.update_id)
        assert update["state"] == "SUCCEEDED"
        assert f"bytes={offset}-" in device.registry.ranges_asked()


def test_kills_at_random_instants_never_leave_a_half_written_model(device):
    rng = random.Random(7)
    for _ in range(5):
        built = device.bundle(
            extra_files={"pad.bin": np.random.default_rng(rng.randrange(999)).bytes(200_000)}
        )
        desired = device.registry.desire(built)
        time.sleep(rng.uniform(0.0, 0.4))
        device.agent.kill()
        update = device.restart_until_over(desired.update_id)
        assert update["state"] == "SUCCEEDED", update
