"""End to end: a real Mosquitto (password file and ACL written by the registry), the registry served over
HTTP, and four real `edgectl-agent` processes enrolled with one-time tokens.

1. `edgectl push` three versions of a real ONNX classifier; v3's health-check sample does not match its
   model, so a device installing it fails its health check (as a broken build would).
2. `edgectl rollout create` v1, then v2, in waves: every agent ends on each version.
3. Roll out v3 in waves of 25 % and 100 %: the first wave's device fails and rolls back, the registry's
   failure-rate gate halts the rollout, and no other device is ever told about v3 (at most 25 % of the
   fleet touched); every agent still serves v2.

A second test serves a version that passes the device's health check but is far slower: the agents
answer inference requests, their telemetry carries the latency, the registry's p95 gate halts the first
wave, and the updated agent obeys the registry's signed rollback order back to the faster version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cli import run
from tests.cloud_registry.conftest import ADMIN_TOKEN, secured_fleet
from tests.device_agent.harness import wait_for
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
AGENTS = 4
WAIT_S = 120.0


class Agent:
    def __init__(self, root: Path, name: str, registry_url: str, trusted: Path) -> None:
        self.root, self.name = root, name
        self.http_port = free_port()
        root.mkdir(parents=True)
        config = {
            "device": {"target": "cpu"},
            "data_dir": str(root / "data"),
            "trusted_keys": [str(trusted)],
            "registry": {"url": registry_url, "poll_interval_s": 2.0, "http_fallback_after_s": 5.0},
            "telemetry": {"interval_s": 1.0},
            "http": {"port": self.http_port},
            "update": {"backoff_initial_s": 0.1, "backoff_max_s": 1.0, "healthcheck_runs": 2},
            "log_level": "info",
        }
        self.config = root / "agent.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = root / "agent.log"
        self.process: subprocess.Popen | None = None

    def command(self, *args: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "device_agent.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            **kw,
        )

    def enroll(self, token: str) -> None:
        token_file = self.root / "token"
        token_file.write_text(token)
        result = self.command("enroll", "--token-file", str(token_file), "--name", self.name)
        assert result.returncode == 0, result.stderr
        token_file.unlink()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "device_agent.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.root,
            )

    def status(self) -> dict | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/v1/status", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None

    def version(self) -> int | None:
        status = self.status() or {}
        return (status.get("model") or {}).get("version")

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name}\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Stack:
    """The running broker and registry, the agents started on them, and the CLI calls the tests make."""

    def __init__(self, url: str, registry, broker, root: Path, trusted: Path, capsys) -> None:  # type: ignore[no-untyped-def]
        self.url, self.registry, self.broker = url, registry, broker
        self.root, self.trusted, self.capsys = root, trusted, capsys
        self.agents: list[Agent] = []

    def cli(self, *args: object):  # type: ignore[no-untyped-def]
        return run(self.capsys, *args)

    def logs(self) -> str:
        return "\n".join(a.tail() for a in self.agents) + "\n--- broker\n" + self.broker.log()[-3000:]

    def start_agents(self, count: int) -> list[Agent]:
        """Enroll `count` agents with one-time tokens (edgectl-agent enroll), start them, wait for their APIs."""
        for i in range(count):
            agent = Agent(self.root / f"agent-{i}", f"agent-{i}", self.url, self.trusted)
            self.agents.append(agent)
            agent.enroll(self.cli("devices", "enroll", "--json").json()["token"])
            agent.start()
        wait_for(lambda: all(a.status() for a in self.agents), "the agents' HTTP APIs", on_timeout=self.logs)
        return self.agents

    def all_on(self, version: int, what: str) -> None:
        wait_for(lambda: all(a.version() == version for a in self.agents), what, on_timeout=self.logs)

    def roll_out(self, version: int, *flags: str) -> dict:
        """`edgectl rollout create`, then `rollout status` until the rollout is no longer running."""
        created = self.cli("rollout", "create", "tiny", "--version", str(version), *flags, "--json")
        assert created.code == 0, created.err
        rollout_id = str(created.json()["id"])

        def finished() -> dict | None:
            info = self.cli("rollout", "status", rollout_id, "--json").json()
            return info if info["state"] != "running" else None

        return wait_for(
            finished,
            f"the rollout of v{version} to finish",
            on_timeout=lambda: self.cli("rollout", "status", rollout_id).out + self.logs(),
        )


@pytest.fixture
def stack(tmp_path, signing, capsys, monkeypatch):
    """Broker + registry (uvicorn, reconciler every 0.3 s) wired like a deployment; the CLI pointed at it."""
    with secured_fleet(
        tmp_path, signing[1], mqtt_client_id="registry-e2e", reconcile_interval_s=0.3, presence_timeout_s=30
    ) as (url, registry, broker):
        monkeypatch.setenv("EDGECTL_REGISTRY_URL", url)
        monkeypatch.setenv("EDGECTL_REGISTRY_TOKEN", ADMIN_TOKEN)
        stack = Stack(url, registry, broker, tmp_path, signing[1], capsys)
        yield stack
        for agent in stack.agents:
            agent.stop()


def test_staged_rollouts_with_real_agents(stack, signing, tmp_path):
    from sqlalchemy import select

    from cloud_registry import models as m
    from tests.device_agent.bundles import classifier_bundle

    for version, health_version in ((1, None), (2, None), (3, 2)):
        built = classifier_bundle(
            tmp_path / f"v{version}", signing[0], version, health_version=health_version
        )
        pushed = stack.cli("push", built.archive, "--json")
        assert pushed.code == 0, pushed.err
    agents = stack.start_agents(AGENTS)

    def fleet() -> dict[str, dict]:
        return {d["name"]: d for d in stack.cli("devices", "list", "--json").json()["devices"]}

    wait_for(
        lambda: all(d["online"] for d in fleet().values()) and len(fleet()) == AGENTS,
        "every agent online (MQTT presence)",
        on_timeout=stack.logs,
    )
    for version in (1, 2):
        info = stack.roll_out(version, "--waves", "25,50,100", "--bake", "1", "--wave-timeout", "300")
        assert info["state"] == "completed", info
        assert info["devices"] == {"succeeded": AGENTS}
        stack.all_on(version, f"every agent on v{version}")
        assert {d["model"]["version"] for d in fleet().values()} == {version}

    bad = stack.roll_out(3, "--waves", "25,100", "--bake", "1", "--wave-timeout", "300")
    assert bad["state"] == "halted", bad
    assert "failure_rate" in bad["reason"]
    assert bad["touched"] == 1 and bad["total"] == AGENTS  # at most the first wave's 25 %
    assert [w["state"] for w in bad["waves"]] == ["halted", "pending"]
    halted = next(d for d in bad["decisions"] if d["action"] == "halted")
    assert halted["actor"] == "reconciler" and "wave 1" in halted["reason"]

    # Every agent serves v2; only one was ever told about v3.
    stack.all_on(2, "every agent back on v2")
    assert {d["model"]["version"] for d in fleet().values()} == {2}
    with stack.registry.factory() as session:
        told = session.scalars(
            select(m.Device.name)
            .join(m.DesiredRecord, m.DesiredRecord.device_id == m.Device.id)
            .where(m.DesiredRecord.version == 3)
        ).all()
        states = session.scalars(select(m.UpdateEvent.state).where(m.UpdateEvent.to_version == 3)).all()
    assert len(told) == 1, told
    assert set(states) & {"FAILED", "ROLLED_BACK"}, states
    assert all(a.process.poll() is None for a in agents), stack.logs()


def slow_classifier_bundle(root: Path, private_key, version: int, *, matmuls: int = 24):  # type: ignore[no-untyped-def]
    """The test classifier of `version` plus an input-dependent chain of 256x256 MatMuls whose result is
    multiplied by zero: the same answers (its health check passes), many times the latency."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgebundle.manifest import (
        Artifact,
        HealthCheck,
        Manifest,
        Postprocessing,
        Preprocessing,
        SourceInfo,
        TensorSpec,
        ToolchainInfo,
    )
    from tests.device_agent.bundles import LABELS, SHAPE, expected_logits, publish, weights

    staging = root / f"stage-slow-{version}"
    staging.mkdir(parents=True)
    w, b = weights(version)
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["fast"]),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["big", "s"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["fast", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow-classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.full((256, 256), 1e-3, dtype=np.float32), "big"),
            numpy_helper.from_array(np.eye(256, dtype=np.float32), "eye"),
            numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, staging / "model.onnx")
    sample = np.random.default_rng(100 + version).uniform(0, 1, size=SHAPE).astype(np.float32)
    np.save(staging / "sample_input.npy", sample)
    np.savez(staging / "sample_outputs.npz", output_0=expected_logits(sample, version))
    manifest = Manifest(
        name="tiny",
        version=version,
        created_at="2026-01-01T00:00:00+00:00",
        target="cpu",
        runtime="onnxruntime",
        precision="fp32",
        artifacts=[
            Artifact(
                path="model.onnx",
                format="onnx",
                precision="fp32",
                inputs=[TensorSpec(name="x", shape=list(SHAPE), dtype="float32", layout="NCHW")],
                outputs=[TensorSpec(name="logits", shape=[1, 4], dtype="float32")],
            )
        ],
        preprocessing=Preprocessing(layout="NCHW", color="RGB", scale=1 / 255, mean=[0.0], std=[1.0]),
        postprocessing=Postprocessing(task="classify", labels=LABELS),
        source=SourceInfo(kind="onnx", filename="model.onnx", sha256="0" * 64),
        toolchain=ToolchainInfo(edgectl="test", converter="onnx.helper"),
        health=HealthCheck(
            sample_input="sample_input.npy", sample_outputs="sample_outputs.npz", min_cosine=0.999
        ),
    )
    return publish(staging, manifest, private_key, root / "out")


class InferenceLoad:
    """An application on each device: posts an input tensor to its agent's /v1/infer, over and over."""

    def __init__(self, agents: list[Agent]) -> None:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.random.default_rng(0).uniform(0, 1, size=(1, 3, 8, 8)).astype(np.float32))
        self.body, self.agents = buffer.getvalue(), agents
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(a,), daemon=True) for a in agents]

    def _run(self, agent: Agent) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                # The agent may be swapping models; the next request goes through.
                with contextlib.suppress(httpx.HTTPError):
                    client.post(
                        f"http://127.0.0.1:{agent.http_port}/v1/infer",
                        content=self.body,
                        headers={"Content-Type": "application/x-npy"},
                    )
                self.stop.wait(0.02)

    def __enter__(self) -> InferenceLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_latency_regression_is_rolled_back_with_a_signed_order(stack, signing, tmp_path):
    from sqlalchemy import func, select

    from cloud_registry import models as m
    from tests.device_agent.bundles import classifier_bundle

    fast = classifier_bundle(tmp_path / "v1", signing[0], 1)
    slow = slow_classifier_bundle(tmp_path / "v2", signing[0], 2)
    for built in (fast, slow):
        assert stack.cli("push", built.archive).code == 0
    agents = stack.start_agents(2)
    assert stack.roll_out(1, "--waves", "100", "--bake", "0")["state"] == "completed"
    stack.all_on(1, "every agent serving v1")

    def served(version: int) -> int:
        with stack.registry.factory() as session:
            return session.scalar(
                select(func.coalesce(func.sum(m.TelemetryRecord.count), 0)).where(
                    m.TelemetryRecord.model_version == version
                )
            )

    with InferenceLoad(agents):
        wait_for(
            lambda: served(1) >= 100, "a baseline of v1 inferences in the registry", on_timeout=stack.logs
        )
        bad = stack.roll_out(
            2, "--waves", "50,100", "--min-inferences", "20", "--bake", "60", "--max-p95-regression", "1.0"
        )
        assert bad["state"] == "halted" and "p95_regression" in bad["reason"], bad
        assert bad["touched"] == 1 and bad["gates"]["p95_regression"] > 1.0
        stack.all_on(1, "the updated agent back on v1")
        wait_for(
            lambda: (
                stack.cli("rollout", "status", str(bad["id"]), "--json").json()["devices"]
                == {"reverted": 1, "pending": 1}
            ),
            "the rollback's SUCCEEDED status",
            on_timeout=stack.logs,
        )
    with stack.registry.factory() as session:
        orders = session.scalars(select(m.DesiredRecord).where(m.DesiredRecord.rollback.is_(True))).all()
    assert len(orders) == 1 and orders[0].version == 1  # obeyed: a signed order, not a bare downgrade
    assert all(a.process.poll() is None for a in agents), stack.logs()
