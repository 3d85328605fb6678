"""OTA updates end to end: the real agent process, the test registry over HTTP, real signed bundles."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgebundle import load_private_key, verify_bundle
from edgewire import sign_rollback
from tests.device_agent.bundles import SHAPE, classifier_bundle, expected_logits
from tests.device_agent.harness import DEVICE, wait_for, write_agent

ALL_STATES = ["QUEUED", "DOWNLOADING", "VERIFYING", "INSTALLING", "HEALTHCHECK", "SUCCEEDED"]
X = np.random.default_rng(7).uniform(0, 1, size=SHAPE).astype(np.float32)


def serves(agent, version: int) -> bool:
    """The agent reports `version` and its answers are exactly that version's model."""
    status = agent.status()
    if not status["model"] or status["model"]["version"] != version:
        return False
    np.testing.assert_allclose(agent.infer_tensor(X), expected_logits(X, version), rtol=1e-5, atol=1e-5)
    return True


def update_to(agent, registry, built, **fields) -> dict:
    """Make `built` the desired version; wait until the update is over and its last state was reported."""
    desired = registry.desire(built, **fields)
    update = agent.wait_update(desired.update_id)
    wait_for(
        lambda: registry.update_states(desired.update_id)[-1:] == [update["state"]],
        f"the registry to receive {update['state']} for {desired.update_id}",
        on_timeout=agent.log_tail,
    )
    return update


@pytest.fixture
def device(tmp_path, signing, commands, registry, agents):
    """An agent polling the test registry, serving v1 of the tiny classifier."""
    setup = write_agent(
        tmp_path / "agent", [signing.public_path], registry=registry, command_keys=[commands.public_path]
    )
    agent = agents(setup)
    v1 = classifier_bundle(tmp_path, signing.private, 1)
    assert update_to(agent, registry, v1)["state"] == "SUCCEEDED"
    return agent


def test_update_reports_every_state_and_serves_the_new_model(tmp_path, signing, registry, device):
    assert serves(device, 1)
    v2 = classifier_bundle(tmp_path, signing.private, 2)
    update = update_to(device, registry, v2)
    assert update["state"] == "SUCCEEDED", update
    assert registry.update_states(update["update_id"]) == ALL_STATES  # over HTTP: this agent has no broker
    assert serves(device, 2)
    status = device.status()
    assert status["active_slot"] == "b" and status["slots"]["a"]["version"] == 1
    verify_bundle(device.setup.data_dir / "slots" / "b", load_private_key(signing.private_path).public_key())
    assert all(r.authorization for r in registry.requests), "every device call carries the device token"
    assert not list((device.setup.data_dir / "downloads").iterdir()), "the archive is cleaned up"


def test_the_same_update_is_applied_once(tmp_path, signing, registry, device):
    """Polling returns the same desired message again and again: one update, six reports."""
    v2 = classifier_bundle(tmp_path, signing.private, 2)
    update = update_to(device, registry, v2)
    polls = sum(1 for r in registry.requests if r.path.endswith("/desired"))
    while sum(1 for r in registry.requests if r.path.endswith("/desired")) < polls + 5:
        time.sleep(0.05)
    assert registry.update_states(update["update_id"]) == ALL_STATES


def test_a_desired_version_already_served_is_reported_succeeded_at_once(tmp_path, signing, registry, device):
    v1 = classifier_bundle(tmp_path / "again", signing.private, 1)
    update = update_to(device, registry, v1)
    assert registry.update_states(update["update_id"]) == ["SUCCEEDED"]
    assert update["reason"] == "this version is already active"


def test_a_model_failing_its_health_check_is_rolled_back_and_reported(tmp_path, signing, registry, device):
    # The bundle's sample outputs are v9's while its model is v2's: on this device it answers wrongly.
    bad = classifier_bundle(tmp_path, signing.private, 2, health_version=9)
    update = update_to(device, registry, bad)
    assert update["state"] == "ROLLED_BACK"
    assert "cosine" in update["reason"]
    states = registry.update_states(update["update_id"])
    assert states == [*ALL_STATES[:-1], "ROLLED_BACK"]
    assert "cosine" in registry.update_reasons(update["update_id"])["ROLLED_BACK"]
    assert serves(device, 1)
    # A fixed build of the same version is a new update and goes through.
    good = classifier_bundle(tmp_path / "fixed", signing.private, 2)
    assert update_to(device, registry, good)["state"] == "SUCCEEDED"
    assert serves(device, 2)


def test_a_model_over_its_latency_budget_is_rolled_back(tmp_path, signing, registry, device):
    slow = classifier_bundle(tmp_path, signing.private, 2, max_latency_ms=1e-6)
    update = update_to(device, registry, slow)
    assert update["state"] == "ROLLED_BACK" and "latency" in update["reason"]
    assert serves(device, 1)


def test_rollback_needs_an_order_signed_by_a_pinned_command_key(
    tmp_path, signing, stranger, commands, registry, device
):
    v2 = classifier_bundle(tmp_path, signing.private, 2)
    assert update_to(device, registry, v2)["state"] == "SUCCEEDED"
    v1 = classifier_bundle(tmp_path / "old", signing.private, 1)

    plain = update_to(device, registry, v1)
    assert plain["state"] == "REJECTED" and "older" in plain["reason"]

    def order(key, **overrides):
        fields = {"device": DEVICE, "model": "tiny", "version": 1, "reason": "halted rollout"} | overrides
        return sign_rollback(key, **fields)

    for bad, why in [
        (order(stranger.private), "does not pin"),
        (order(commands.private, device="other-device"), "not "),
        (order(commands.private, version=2), "not "),
        (order(commands.private, ttl_s=-1000), "expired"),
    ]:
        refused = update_to(device, registry, v1, rollback=bad)
        assert refused["state"] == "REJECTED" and why in refused["reason"], refused
        assert serves(device, 2)

    accepted = update_to(device, registry, v1, rollback=order(commands.private))
    assert accepted["state"] == "SUCCEEDED"
    assert serves(device, 1)


def test_a_newer_desired_version_supersedes_a_download(tmp_path, signing, registry, device):
    big = classifier_bundle(
        tmp_path, signing.private, 2, extra_files={"pad.bin": np.random.default_rng(0).bytes(400_000)}
    )
    registry.hold = threading.Event()  # the archive's body stops after its first KB until released
    first = registry.desire(big)
    device.wait_update(first.update_id, ("DOWNLOADING",))
    v3 = classifier_bundle(tmp_path, signing.private, 3)
    second = registry.desire(v3)
    polls = len(registry.requests)
    wait_for(
        lambda: sum(r.path.endswith("/desired") for r in registry.requests[polls:]) >= 2, "two polls of v3"
    )
    registry.hold.set()
    assert device.wait_update(second.update_id)["state"] == "SUCCEEDED"
    wait_for(lambda: registry.update_states(second.update_id)[-1:] == ["SUCCEEDED"], "the report")
    assert registry.update_states(first.update_id) == ["QUEUED", "DOWNLOADING", "FAILED"]
    assert "newer" in registry.update_reasons(first.update_id)["FAILED"]
    assert serves(device, 3)


def test_a_tampered_active_slot_is_never_served_after_a_restart(tmp_path, signing, registry, device):
    v2 = classifier_bundle(tmp_path, signing.private, 2)
    assert update_to(device, registry, v2)["state"] == "SUCCEEDED"
    device.terminate()
    model = device.setup.data_dir / "slots" / "b" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit on the card: still a loadable model, but not the signed one
    model.write_bytes(bytes(data))
    device.start()
    status = device.status()
    assert status["active_slot"] == "a" and serves(device, 1)  # back to the previous verified model
    assert "does not verify" in device.log_tail(200)
    # With the previous slot damaged too there is nothing safe to serve: no model rather than a wrong one.
    device.terminate()
    (device.setup.data_dir / "slots" / "a" / "sample_input.npy").write_bytes(b"changed")
    device.start()
    assert device.status()["model"] is None
    code, _ = device.post("/v1/infer", b"\x93NUMPY", "application/x-npy")
    assert code == 503


def test_without_a_broker_telemetry_goes_to_the_registry_over_http(tmp_path, signing, registry, agents):
    setup = write_agent(
        tmp_path / "http-only", [signing.public_path], registry=registry, telemetry_interval_s=0.2
    )
    agent = agents(setup)
    wait_for(lambda: len(registry.telemetry) >= 3, "telemetry over HTTP", on_timeout=agent.log_tail)
    seqs = [t.seq for t in registry.telemetry]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(t.device == DEVICE and t.inference.count == 0 for t in registry.telemetry)


def test_a_crash_while_the_new_model_is_on_probation_rolls_back(tmp_path, signing, registry, agents):
    setup = write_agent(
        tmp_path / "probation",
        [signing.public_path],
        registry=registry,
        update={"probation_s": 600, "crash_loop_limit": 1},
    )
    agent = agents(setup)
    v1 = classifier_bundle(tmp_path, signing.private, 1)
    desired = registry.desire(v1)
    wait_for(lambda: (agent.status()["model"] or {}).get("version") == 1, "v1 on probation")
    assert agent.status()["update"]["state"] == "HEALTHCHECK"  # served, not yet committed
    assert serves(agent, 1)
    agent.kill()  # the new model 'crashed' the agent during its probation
    agent.start()
    update = agent.wait_update(desired.update_id)
    assert update["state"] == "ROLLED_BACK" and "restarted 1 times during HEALTHCHECK" in update["reason"]
    assert agent.status()["model"] is None  # nothing was committed before: no model rather than a suspect one


def test_a_device_provisioned_from_a_file_takes_the_registrys_update(
    tmp_path, signing, registry, agents, keep_logging
):
    from device_agent.cli import main

    setup = write_agent(tmp_path / "provisioned", [signing.public_path], registry=registry)
    assert (
        main(
            [
                "install",
                "--config",
                str(setup.config),
                str(classifier_bundle(tmp_path, signing.private, 1).archive),
            ]
        )
        == 0
    )
    # The rollout was created before the device was flashed: its message is older than the local install.
    desired = registry.desire(
        classifier_bundle(tmp_path / "v2", signing.private, 2), issued_at=time.time() - 3600
    )
    agent = agents(setup)
    assert agent.wait_update(desired.update_id)["state"] == "SUCCEEDED"
    assert serves(agent, 2)
    wait_for(lambda: registry.update_states(desired.update_id) == ALL_STATES, "the reports")
