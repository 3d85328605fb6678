"""Run the real agent (`python -m device_agent.cli run`) as a child process and talk to it over its HTTP API.

Waiting is done by polling with a generous deadline (machines are slow and
shared); a deadline that passes is a failure with the agent's log attached,
never a speed assertion.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edgewire import EnrollResponse, MqttSettings
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
DEVICE, FLEET = "dev-1", "fleet-1"
WAIT_S = 90.0


def wait_for(
    predicate: Callable[[], object],
    what: str,
    timeout: float = WAIT_S,
    on_timeout: Callable[[], str] | None = None,
):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(0.05)


@dataclass
class AgentSetup:
    root: Path
    config: Path
    data_dir: Path
    http_port: int
    crash_file: Path


def write_agent(
    root: Path,
    trusted: list[Path],
    *,
    registry=None,
    broker_port: int | None = None,
    mqtt_password: str = "mqtt-secret-password",
    command_keys: list[Path] = (),
    telemetry_interval_s: float = 60.0,
    poll_s: float = 0.1,
    update: dict | None = None,
    **extra,
) -> AgentSetup:
    """An agent config (and, with a registry, the credentials an enrollment would have written)."""
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    port = free_port()
    config: dict = {
        "device": {"target": "cpu"},
        "data_dir": str(data_dir),
        "trusted_keys": [str(p) for p in trusted],
        "command_keys": [str(p) for p in command_keys],
        "http": {"port": port},
        "telemetry": {"interval_s": telemetry_interval_s},
        "update": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "healthcheck_runs": 2, **(update or {})},
        "log_level": "debug",
    }
    if registry is not None:
        config["registry"] = {"url": registry.url, "poll_interval_s": poll_s, "http_fallback_after_s": 0.5}
        mqtt = (
            MqttSettings(host="127.0.0.1", port=broker_port, username=DEVICE, password=mqtt_password)
            if broker_port
            else None
        )
        credentials = EnrollResponse(
            device=DEVICE, fleet=FLEET, device_token=registry.device_token, mqtt=mqtt
        )
        path = data_dir / "credentials.json"
        path.write_text(credentials.model_dump_json())
        path.chmod(0o600)
    else:
        config["device"].update({"id": DEVICE, "fleet": FLEET})
        if broker_port:
            config["mqtt"] = {"host": "127.0.0.1", "port": broker_port}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return AgentSetup(root, path, data_dir, port, root / "crash-at")


class AgentProcess:
    def __init__(self, setup: AgentSetup) -> None:
        self.setup = setup
        self.process: subprocess.Popen | None = None
        self.log_path = setup.root / "agent.log"
        self.starts = 0

    # ------------------------------------------------------------------ process

    def start(self, wait: bool = True) -> AgentProcess:
        env = {**os.environ, "EDGECTL_AGENT_CRASH_FILE": str(self.setup.crash_file), "PYTHONPATH": str(REPO)}
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it)
        log.write(f"---- start {self.starts}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "run", "--config", str(self.setup.config)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.setup.root,
        )
        log.close()
        self.starts += 1
        if wait:
            wait_for(self._ready, "the agent's HTTP API", on_timeout=self.log_tail)
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the agent exited with {self.process.returncode}\n{self.log_tail()}")
        try:
            self.get("/v1/status")
            return True
        except (OSError, http.client.HTTPException):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not exit\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            self.process.wait()  # type: ignore[union-attr]

    def terminate(self) -> int:
        if not self.alive():
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        return self.wait_exit(30)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def arm(self, point: str) -> None:
        """Make the agent SIGKILL itself at `point` (see device_agent.faults)."""
        self.setup.crash_file.write_text(point)

    # ------------------------------------------------------------------ HTTP

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.setup.http_port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            body = response.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
        request = urllib.request.Request(self.url(path), data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def status(self) -> dict:
        return self.get("/v1/status")

    def infer_tensor(self, x: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        np.save(buffer, x)
        code, body = self.post("/v1/infer?outputs=1", buffer.getvalue(), "application/x-npy")
        assert code == 200, body
        output = body["outputs"][0]
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])

    def update_state(self) -> str | None:
        update = self.status()["update"]
        return update["state"] if update else None

    def wait_update(
        self, update_id: str, states: tuple[str, ...] = ("SUCCEEDED", "FAILED", "ROLLED_BACK", "REJECTED")
    ) -> dict:
        def done():
            update = self.status()["update"]
            return (
                update if update and update["update_id"] == update_id and update["state"] in states else None
            )

        return wait_for(done, f"update {update_id} to reach {states}", on_timeout=self.log_tail)
