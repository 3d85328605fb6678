"""A real Prometheus for the deploy tests: Debian's `prometheus` binary on a free loopback port, with the
shipped rules, scraping what a test names; queried through its HTTP API. `promtool` and `amtool` too.
The Makefile's install step puts the binaries there, so a missing one fails rather than skips."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "edgectl.rules.yml"


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} is missing: `make install` puts it there (Debian's prometheus packages)"
    return path


def tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary(name), *map(str, args)], capture_output=True, text=True, timeout=120)


def shipped_config(root: Path, *, registry: str, token: str, agents: list[str], interval: str = "1s") -> Path:
    """deploy/prometheus/prometheus.yml as shipped, pointed at this test's registry and agents."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    token_file = root / "registry.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    (root / "rules").mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, root / "rules" / RULES.name)
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config.pop("alerting")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["edgectl-registry"]["authorization"]["credentials_file"] = str(token_file)
    jobs["edgectl-registry"]["static_configs"] = [{"targets": [registry]}]
    (root / "agents.yml").write_text(yaml.safe_dump([{"targets": agents, "labels": {"group": "test"}}]))
    jobs["edgectl-agent"]["file_sd_configs"] = [{"files": [str(root / "agents.yml")]}]
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, root: Path, config: Path) -> None:
        self.root, self.config, self.port = root, config, free_port()
        self.process: subprocess.Popen | None = None
        self.log = root / "prometheus.log"

    def start(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, 30)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: str) -> dict:
        response = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait(self, expr: str, what: str, timeout: float = 90.0) -> list[dict]:
        """The query's result once it is not empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        targets = self.api("targets")["activeTargets"]
        raise AssertionError(
            f"timed out waiting for {what} ({expr}); targets: "
            + "; ".join(f"{t['scrapeUrl']} {t['health']} {t['lastError']}" for t in targets)
            + "\n"
            + self.log.read_text()[-2000:]
        )
