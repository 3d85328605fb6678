"""Job runners: where an attempt's worker (`cloud_registry.jobs.worker.run`) executes.

One small interface, two implementations:
- `LocalProcessRunner` (default): each attempt is a child process of the registry, at most
  `jobs_max_workers` at once, in its own process group (a cancel or a timeout stops the training and
  the build it started);
- `RayRunner`: each attempt is a Ray task (`num_cpus` 1) on the cluster at `ray_address`; the workers
  must reach the jobs folder (a shared filesystem), as they read spec.json and write outcome.json there.

Runners hold no state the registry needs after a restart: the database says which attempt of which
job is current, and an attempt whose registry went away is run again (see `manager`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloud_registry.jobs.spec import LOG_FILE, OUTCOME_FILE
from cloud_registry.jobs.worker import child_env

log = logging.getLogger("cloud_registry.jobs")


@dataclass(frozen=True)
class Finished:
    job_id: int
    attempt: int
    outcome: dict[str, Any] | None  # the worker's JobOutcome; None when it died without one
    error: str | None = None


class JobRunner(Protocol):
    name: str

    def free(self) -> int:
        """How many more attempts it takes now."""

    def submit(self, job_id: int, attempt: int, spec_path: Path) -> None: ...

    def poll(self) -> list[Finished]:
        """Attempts that ended since the last call."""

    def running(self) -> set[tuple[int, int]]:
        """(job id, attempt) of what it runs now."""

    def cancel(self, job_id: int) -> None: ...

    def close(self) -> None:
        """Stop everything it runs (the registry is stopping)."""


def _read_outcome(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((workdir / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None


class LocalProcessRunner:
    name = "local"

    def __init__(self, max_workers: int = 1) -> None:
        self.max_workers = max_workers
        self._processes: dict[tuple[int, int], tuple[subprocess.Popen, Path]] = {}

    def free(self) -> int:
        return max(0, self.max_workers - len(self._processes))

    def submit(self, job_id: int, attempt: int, spec_path: Path) -> None:
        workdir = spec_path.parent
        with open(workdir / "worker.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "cloud_registry.jobs.worker", str(spec_path)],
                cwd=workdir,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel stops its children too
                env=child_env({"PYTHONPATH": _python_path()}),
            )
        (workdir / "worker.pid").write_text(str(process.pid))  # its process group, for an operator
        self._processes[(job_id, attempt)] = (process, workdir)

    def poll(self) -> list[Finished]:
        finished = []
        for key, (process, workdir) in list(self._processes.items()):
            code = process.poll()
            if code is None:
                continue
            del self._processes[key]
            outcome = _read_outcome(workdir)
            error = (
                None
                if outcome
                else f"the job worker exited with {code} and left no outcome; see {workdir / 'worker.log'}"
            )
            finished.append(Finished(key[0], key[1], outcome, error))
        return finished

    def running(self) -> set[tuple[int, int]]:
        return set(self._processes)

    def cancel(self, job_id: int) -> None:
        for (running_id, attempt), (process, _) in list(self._processes.items()):
            if running_id == job_id:
                _stop(process)
                del self._processes[(running_id, attempt)]

    def close(self) -> None:
        for process, _ in self._processes.values():
            _stop(process)
        self._processes.clear()


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _python_path() -> str:
    """The registry's own import path first, so the worker imports the same cloud_registry."""
    root = str(Path(__file__).resolve().parents[2])
    current = os.environ.get("PYTHONPATH", "")
    return root if not current else f"{root}{os.pathsep}{current}"


def _ray_attempt(spec_path: str) -> dict[str, Any]:
    """The Ray task: the same worker as a local process, with its log kept beside the job's."""
    from cloud_registry.jobs.worker import run

    return run(spec_path)


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None, max_workers: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "jobs_runner ray needs the Python package 'ray' (pip install ray, the version of the cluster)"
            ) from None
        self._ray = ray
        ray.init(
            address=address,
            ignore_reinit_error=True,
            log_to_driver=False,
            include_dashboard=False,
            namespace="edgectl-jobs",
        )
        self.max_workers = max_workers
        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_attempt)
        self._refs: dict[Any, tuple[int, int, Path]] = {}

    def free(self) -> int:
        return max(0, self.max_workers - len(self._refs))

    def submit(self, job_id: int, attempt: int, spec_path: Path) -> None:
        self._refs[self._task.remote(str(spec_path))] = (job_id, attempt, spec_path.parent)

    def poll(self) -> list[Finished]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        finished = []
        for ref in ready:
            job_id, attempt, workdir = self._refs.pop(ref)
            try:
                finished.append(Finished(job_id, attempt, self._ray.get(ref)))
            except Exception as exc:  # the task died (worker lost, cancelled): no outcome from it
                outcome = _read_outcome(workdir)
                message = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                finished.append(
                    Finished(job_id, attempt, outcome, None if outcome else f"the Ray task failed: {message}")
                )
        return finished

    def running(self) -> set[tuple[int, int]]:
        return {(job_id, attempt) for job_id, attempt, _ in self._refs.values()}

    def cancel(self, job_id: int) -> None:
        for ref, (running_id, _, _) in list(self._refs.items()):
            if running_id == job_id:
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
                del self._refs[ref]

    def close(self) -> None:
        for ref in list(self._refs):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        self._ray.shutdown()  # disconnects this driver; the cluster itself keeps running


def make_runner(kind: str, *, max_workers: int, ray_address: str | None) -> JobRunner:
    if kind == "ray":
        return RayRunner(ray_address, max_workers)
    return LocalProcessRunner(max_workers)


def worker_log(workdir: Path) -> Path:
    return workdir / LOG_FILE
