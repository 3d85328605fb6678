"""Enrollment writes the credential once with mode 0600; no secret ever reaches a log."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import yaml

from device_agent.cli import REDACT, _Redact
from edgewire import EnrollResponse, MqttSettings
from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import wait_for, write_agent
from tests.device_agent.test_cli import assert_user_error, run
from tests.device_agent.test_updates import serves


def enroll_config(tmp_path, signing, registry) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device": {"target": "cpu", "tags": ["lab"]},
                "data_dir": str(tmp_path / "data"),
                "trusted_keys": [str(signing.public_path)],
                "registry": {"url": registry.url},
            }
        )
    )
    return str(path)


def test_enrollment_writes_private_credentials_once(
    capsys, tmp_path, signing, registry, keep_logging, monkeypatch
):
    config = enroll_config(tmp_path, signing, registry)
    token_file = tmp_path / "token"
    token_file.write_text(registry.enroll_token + "\n")

    code, _, out = run(capsys, "enroll", "--config", config, "--token-file", token_file, "--name", "cam-7")
    assert code == 0 and "enrolled as cam-7 in fleet fleet-1" in out
    credentials = tmp_path / "data" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    saved = EnrollResponse.model_validate_json(credentials.read_text())
    assert (saved.device, saved.device_token) == ("cam-7", registry.device_token)
    assert registry.enroll_token not in out and registry.device_token not in out

    calls = len(registry.requests)
    assert_user_error(run(capsys, "enroll", "--config", config, "--token-file", token_file), "already exists")
    assert len(registry.requests) == calls, "the one-time token is not spent on a refused enrollment"

    monkeypatch.setenv("EDGECTL_ENROLL_TOKEN", "x" * 32)
    assert_user_error(run(capsys, "enroll", "--config", config, "--force"), "refused the enrollment token")
    monkeypatch.setenv("EDGECTL_ENROLL_TOKEN", registry.enroll_token)
    assert run(capsys, "enroll", "--config", config, "--force")[0] == 0
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600


def test_enrollment_needs_a_token_and_a_registry(
    capsys, tmp_path, signing, registry, keep_logging, monkeypatch
):
    monkeypatch.delenv("EDGECTL_ENROLL_TOKEN", raising=False)
    config = enroll_config(tmp_path, signing, registry)
    assert_user_error(run(capsys, "enroll", "--config", config), "no enrollment token")
    short = tmp_path / "short"
    short.write_text("abc")
    assert_user_error(
        run(capsys, "enroll", "--config", config, "--token-file", short), "invalid enrollment request"
    )
    no_registry = tmp_path / "plain.yaml"
    no_registry.write_text(
        yaml.safe_dump({k: v for k, v in yaml.safe_load(Path(config).read_text()).items() if k != "registry"})
    )
    assert_user_error(
        run(capsys, "enroll", "--config", no_registry, "--token-file", short), "no registry section"
    )
    registry.stop()
    token = tmp_path / "token"
    token.write_text(registry.enroll_token)
    assert_user_error(
        run(capsys, "enroll", "--config", config, "--token-file", token), "cannot reach the registry"
    )
    registry.start()


def test_the_redaction_filter_removes_secrets_from_messages_and_tracebacks():
    redact = _Redact()
    redact.secrets = ["s3cr3t-token"]
    try:
        raise ValueError("token s3cr3t-token leaked into an exception")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "sending %s", ("s3cr3t-token",), exc_info=True
        )
        import sys

        record.exc_info = sys.exc_info()
    assert redact.filter(record)
    assert "s3cr3t-token" not in record.getMessage() and "***" in record.getMessage()
    assert "s3cr3t-token" not in record.exc_text and record.exc_info is None
    assert REDACT is not redact


def test_no_secret_reaches_the_agent_log(tmp_path, signing, registry, broker, agents):
    password = "mqtt-password-that-must-not-leak"
    registry.mqtt = MqttSettings(host="127.0.0.1", port=broker.port, username="dev-1", password=password)
    setup = write_agent(
        tmp_path / "a",
        [signing.public_path],
        registry=registry,
        broker_port=broker.port,
        mqtt_password=password,
    )
    agent = agents(setup)  # log_level debug: the chattiest the agent gets
    wait_for(lambda: agent.status()["mqtt"]["connected"], "MQTT")
    # Statuses go over MQTT here, so wait on the agent rather than on the registry's HTTP inbox.
    agent.wait_update(registry.desire(classifier_bundle(tmp_path, signing.private, 1)).update_id)
    assert serves(agent, 1)
    registry.fail_next = 2  # errors get logged too
    agent.wait_update(registry.desire(classifier_bundle(tmp_path / "2", signing.private, 2)).update_id)
    assert serves(agent, 2)
    agent.terminate()
    log = agent.log_path.read_text()
    assert "DEBUG" in log and "connected to the MQTT broker" in log
    assert registry.device_token not in log and password not in log
    assert "registry: GET /v1/device/desired answered 503" in log or "answered 503" in log
    assert stat.S_IMODE((setup.data_dir / "credentials.json").stat().st_mode) == 0o600
