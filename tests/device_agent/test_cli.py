"""Bad command lines and configurations: one `error:` line, one `hint:` line, a non-zero exit, for each."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from device_agent.cli import main
from edgewire import EnrollResponse
from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import write_agent


def run(capsys, *args) -> tuple[int, list[str], str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own exit
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return (
        code,
        [line for line in captured.err.splitlines() if line.startswith(("error:", "hint:"))],
        captured.out,
    )


def assert_user_error(result, *words: str, code: int | None = None) -> None:
    exit_code, lines, _ = result
    assert exit_code != 0 and (code is None or exit_code == code), result
    assert [line.split(":")[0] for line in lines] == ["error", "hint"], lines
    for word in words:
        assert word in lines[0], (word, lines)


@pytest.fixture
def config(tmp_path, signing):
    """A valid configuration to break one field at a time."""
    return {
        "device": {"target": "cpu", "id": "dev-1", "fleet": "fleet-1"},
        "data_dir": str(tmp_path / "data"),
        "trusted_keys": [str(signing.public_path)],
    }


def write(tmp_path, data) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], ["required"]),
        (["fly"], ["invalid choice"]),
        (["run"], ["--config"]),
        (["install", "--config", "x.yaml"], ["bundle"]),
    ],
)
def test_bad_command_lines(capsys, argv, words):
    assert_user_error(run(capsys, *argv), *words, code=2)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: "device: [unclosed", ["not valid YAML", "line"]),
        (lambda c: "- a list\n", ["expected a mapping"]),
        (lambda c: "", ["an empty file"]),
        (lambda c: {**c, "colour": "blue"}, ["colour", "unknown field"]),
        (lambda c: {**c, "device": {"target": "Raspberry Pi!"}}, ["device.target"]),
        (lambda c: {**c, "device": {"target": "cpu", "id": "Dev_1"}}, ["device.id"]),
        (lambda c: {**c, "trusted_keys": []}, ["trusted_keys"]),
        (lambda c: {k: v for k, v in c.items() if k != "data_dir"}, ["data_dir", "Field required"]),
        (lambda c: {**c, "registry": {"url": "ftp://registry"}}, ["registry.url", "http"]),
        (lambda c: {**c, "telemetry": {"interval_s": 0}}, ["telemetry.interval_s"]),
        (lambda c: {**c, "http": {"port": 70000}}, ["http.port"]),
        (lambda c: {**c, "input": {"results": "r.jsonl"}}, ["exactly one of folder or video"]),
        (lambda c: {**c, "update": {"crash_loop_limit": 0}}, ["update.crash_loop_limit"]),
        (lambda c: {**c, "trusted_keys": ["missing.pub"]}, ["missing.pub"]),
        (lambda c: {**c, "device": {"target": "cpu"}}, ["no id", "not enrolled"]),
    ],
)
def test_bad_configurations(capsys, tmp_path, config, edit, words, keep_logging):
    path = write(tmp_path, edit(config))
    assert_user_error(run(capsys, "run", "--config", path), *words, code=2)


def test_a_config_file_that_is_not_there(capsys, tmp_path):
    assert_user_error(run(capsys, "status", "--config", tmp_path / "nope.yaml"), "does not exist", code=2)


def test_a_private_key_pinned_as_trusted_is_refused(capsys, tmp_path, config, signing, keep_logging):
    path = write(tmp_path, {**config, "trusted_keys": [str(signing.private_path)]})
    assert_user_error(run(capsys, "run", "--config", path), "private key")


def test_credentials_readable_by_others_are_refused(capsys, tmp_path, config, keep_logging):
    credentials = tmp_path / "data" / "credentials.json"
    credentials.parent.mkdir()
    credentials.write_text(
        EnrollResponse(device="dev-1", fleet="fleet-1", device_token="t" * 20).model_dump_json()
    )
    credentials.chmod(0o644)
    path = write(tmp_path, config)
    assert_user_error(run(capsys, "run", "--config", path), "can be read by other users", "0644")
    credentials.chmod(0o600)
    other = write(tmp_path, {**config, "device": {"target": "cpu", "id": "dev-2"}})
    assert_user_error(run(capsys, "run", "--config", other), "device.id", "credentials say")


def test_a_port_in_use_and_a_second_agent_on_the_same_data(
    capsys, tmp_path, config, signing, agents, keep_logging
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = write(tmp_path, {**config, "http": {"port": taken.getsockname()[1]}})
        assert_user_error(run(capsys, "run", "--config", path), "cannot listen")
    setup = write_agent(tmp_path / "running", [signing.public_path])
    agents(setup)
    assert_user_error(run(capsys, "install", "--config", setup.config, tmp_path / "x"), "does not exist")
    bundle = classifier_bundle(tmp_path, signing.private, 1)
    assert_user_error(
        run(capsys, "install", "--config", setup.config, bundle.archive), "another edgectl-agent"
    )


def test_install_refuses_what_is_not_a_bundle_and_reports_a_refused_one(
    capsys, tmp_path, config, signing, stranger, keep_logging
):
    path = write(tmp_path, config)
    junk = tmp_path / "junk.edgebundle"
    junk.write_bytes(b"\x1f\x8b not really")
    assert_user_error(run(capsys, "install", "--config", path, junk), "not a readable bundle")
    foreign = classifier_bundle(tmp_path, stranger.private, 1)
    assert_user_error(run(capsys, "install", "--config", path, foreign.archive), "REJECTED", "does not pin")
    good = classifier_bundle(tmp_path / "good", signing.private, 1)
    code, _, out = run(capsys, "install", "--config", path, good.archive)
    assert code == 0 and "installed tiny v1 into slot a" in out
    code, _, out = run(capsys, "status", "--config", path, "--json")
    status = json.loads(out)
    assert code == 0 and status["running"] is False and status["model"]["version"] == 1


def test_status_without_an_agent_or_state(capsys, tmp_path, config):
    assert_user_error(run(capsys, "status", "--config", write(tmp_path, config)), "not running")


def test_version(capsys):
    code, _, out = run(capsys, "--version")
    assert code == 0 and out.startswith("edgectl-agent ")


def test_the_shipped_example_configuration_is_valid():
    from device_agent.config import load_config
    from tests.device_agent.harness import REPO

    config = load_config(REPO / "deploy" / "agent.example.yaml")
    assert config.device.target == "rpi5" and config.http.host == "127.0.0.1"
    assert config.credentials_path == config.data_dir / "credentials.json"
    unit = (REPO / "deploy" / "systemd" / "edgectl-agent.service").read_text()
    assert "ExecStart=/opt/edgectl/venv/bin/edgectl-agent run --config /etc/edgectl/agent.yaml" in unit
