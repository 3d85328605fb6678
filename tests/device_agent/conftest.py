"""Fixtures of the agent tests: real keys, real signed bundles, a real broker, a real HTTP server."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgebundle import generate_keypair, load_private_key
from tests.device_agent.harness import AgentProcess
from tests.device_agent.registry_server import FakeRegistry
from tests.services import Mosquitto


@dataclass(frozen=True)
class KeyPair:
    private: object
    private_path: Path
    public_path: Path


def _pair(folder: Path, name: str) -> KeyPair:
    private_path, public_path = generate_keypair(folder, name)
    return KeyPair(load_private_key(private_path), private_path, public_path)


@pytest.fixture(scope="session")
def signing(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The release key the devices pin."""
    return _pair(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A valid key no device pins."""
    return _pair(tmp_path_factory.mktemp("keys"), "stranger")


@pytest.fixture(scope="session")
def commands(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The key whose rollback orders devices obey."""
    return _pair(tmp_path_factory.mktemp("keys"), "commands")


@pytest.fixture
def registry():
    server = FakeRegistry().start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path):
    server = Mosquitto(tmp_path / "mosquitto").start()
    yield server
    server.stop()


@pytest.fixture
def agents():
    """Start agents with `agents(setup)`; every one still running is killed at the end."""
    started: list[AgentProcess] = []

    def start(setup, **kwargs) -> AgentProcess:
        agent = AgentProcess(setup).start(**kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def keep_logging():
    """The CLI configures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
