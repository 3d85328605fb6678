"""One attempt of a retraining job, from spec.json to outcome.json: train, build, evaluate.

Runs as `python -m cloud_registry.jobs.worker SPEC` (the local runner) or as a Ray task (`run`). It
imports neither the toolchain nor the training code: each step is a child process.

1. training: the policy's entry point, a callable (through `cloud_registry.jobs.entry`) or a command,
   gets job.json (TrainingJob: parent weights, training data reference, the feedback samples) and
   leaves `out/result.json` (TrainingResult: the new model file, optional val / calib data);
2. building: `edgectl build` of that model for every target of the parent, with the parent's precision,
   preprocessing, labels and accuracy gate, signed with the registry's job key;
3. evaluating: `edgectl retrain evaluate` runs the parent's and the candidate's bundles on the held-out
   samples (which the entry point never saw) and reports top-1 per target.

Whether the candidate is good enough is the registry's decision (its policy's tolerance), not this one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from cloud_registry.jobs.contract import TrainingJob, TrainingResult
from cloud_registry.jobs.spec import LOG_FILE, OUTCOME_FILE, STATUS_FILE, JobOutcome, JobSpec

STEP_TIMEOUT_S = 3600.0  # build and evaluation; training has the policy's own timeout
REGISTRY_ENV_PREFIX = "EDGECTL_REGISTRY_"


class StepFailed(Exception):
    """A step failed; the message says which and why (the child's `error:` line when it printed one)."""


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(temp, path)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a job's processes: the registry's settings (its admin token, broker password)
    are not the training code's business."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(REGISTRY_ENV_PREFIX)}
    return {**env, **(extra or {})}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _child(
    argv: list[str],
    *,
    what: str,
    log: IO[str],
    timeout_s: float,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdout_path: Path | None = None,
) -> str:
    """Run a step's process in its own process group (killed whole on timeout); its stdout when captured."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    start = Path(log.name).stat().st_size
    out = open(stdout_path, "w") if stdout_path else log  # noqa: SIM115 (closed below)
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env(env),
            stdout=out,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise StepFailed(f"{what}: cannot start {argv[0]}: {exc.strerror or exc}") from None
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise StepFailed(f"{what} ran past its {timeout_s:g} s timeout and was stopped") from None
    finally:
        if stdout_path:
            out.close()
    log.flush()
    if code != 0:
        raise StepFailed(f"{what} failed (exit {code}){_error_line(Path(log.name), start)}")
    return stdout_path.read_text() if stdout_path else ""


def _error_line(log: Path, start: int) -> str:
    """`: <the last error: line>` of what the step printed, to say why it failed in one line."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(start, log.stat().st_size - 20000))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return ": " + errors[-1].removeprefix("error:").strip()[:400]
    last = [line for line in lines if line][-1:] or [""]
    return f": {last[0][:400]}" if last[0] else ""


def _phase(spec: JobSpec, name: str) -> None:
    _write_json(spec.path(STATUS_FILE), {"phase": name, "at": time.time()})


def _train(spec: JobSpec, log: IO[str]) -> TrainingResult:
    out_dir = spec.path("out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").unlink(missing_ok=True)
    job = TrainingJob(
        job_id=spec.job_id,
        model=spec.model,
        parent_version=spec.parent_version,
        new_version=spec.new_version,
        parent_model=spec.parent_model,
        training_data=spec.training_data,
        samples=spec.train_data,
        labels=spec.labels,
        preprocessing=spec.preprocessing,
        input_shape=spec.input_shape,
        out_dir=out_dir,
        params=spec.entry_point.params,
    )
    job_file = spec.path("job.json")
    job_file.write_text(job.to_json())
    entry = spec.entry_point
    if entry.callable is not None:
        argv = [sys.executable, "-m", "cloud_registry.jobs.entry", str(job_file), entry.callable]
        what = f"training entry point {entry.callable}"
    else:
        values = {
            "job": job_file,
            "parent_model": spec.parent_model,
            "samples": spec.train_data,
            "out_dir": out_dir,
            "training_data": spec.training_data or "",
            "model": spec.model,
            "parent_version": spec.parent_version,
            "new_version": spec.new_version,
        }
        argv = [arg.format(**values) for arg in entry.command or []]
        what = f"training command {argv[0]}"
    _child(
        argv,
        what=what,
        log=log,
        timeout_s=entry.timeout_s,
        cwd=spec.workdir,
        env={**entry.env, "EDGECTL_JOB": str(job_file)},
    )
    result_file = out_dir / "result.json"
    if not result_file.is_file():
        raise StepFailed(f"{what} wrote no {result_file.name} in its out_dir")
    try:
        result = TrainingResult.from_any(json.loads(result_file.read_text()), out_dir)
    except (ValueError, TypeError) as exc:
        raise StepFailed(f"{what}: bad result.json: {exc}") from None
    for name, path in (("model", result.model), ("val", result.val), ("calib", result.calib)):
        if path is not None and not path.exists():
            raise StepFailed(f"{what} returned {name} {path}, which does not exist")
    return result


def _fmt(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _build(spec: JobSpec, result: TrainingResult, log: IO[str]) -> tuple[dict[str, Path], dict[str, dict]]:
    """`edgectl build` once per precision of the parent's targets; (target -> archive, target -> validation)."""
    labels_file = spec.path("labels.txt")
    labels_file.write_text("\n".join(spec.labels) + "\n")
    pre = spec.preprocessing
    common = [
        "--calib",
        str(result.calib or spec.train_data),
        "--val",
        str(result.val or spec.train_data),
        "--max-drop",
        f"{spec.max_drop:g}",
        "--name",
        spec.model,
        "--version",
        str(spec.new_version),
        "--out",
        str(spec.path("bundles")),
        "--sign-key",
        str(spec.sign_key),
        "--input-shape",
        _fmt(spec.input_shape),
        "--parent-version",
        str(spec.parent_version),
        "--trigger",
        spec.trigger,
        "--json",
    ]
    if spec.training_data:
        common += ["--training-data", spec.training_data]
    if pre.get("input", "image") == "image":
        common += ["--scale", f"{pre['scale']!r}", "--mean", _fmt(pre["mean"]), "--std", _fmt(pre["std"])]
        if pre.get("color"):
            common += ["--color", pre["color"]]
    if spec.labels:
        common += ["--labels", str(labels_file)]
    by_precision: dict[str, list[str]] = {}
    for target, precision in sorted(spec.targets.items()):
        by_precision.setdefault(precision, []).append(target)
    archives: dict[str, Path] = {}
    validation: dict[str, dict] = {}
    for precision, targets in sorted(by_precision.items()):
        argv = [*spec.edgectl, "build", str(result.model)]
        for target in targets:
            argv += ["-t", target]
        argv += ["--precision", precision, *common, *spec.build_extra_args, *result.build_args]
        stdout = _child(
            argv,
            what=f"edgectl build ({', '.join(targets)})",
            log=log,
            timeout_s=STEP_TIMEOUT_S,
            cwd=spec.workdir,
            stdout_path=spec.path(f"build-{precision}.json"),
        )
        for bundle in json.loads(stdout)["bundles"]:
            archives[bundle["target"]] = Path(bundle["archive"])
            validation[bundle["target"]] = bundle.get("validation") or {}
    missing = sorted(set(spec.targets) - set(archives))
    if missing:
        raise StepFailed(f"edgectl build made no bundle for {', '.join(missing)}")
    return archives, validation


def _evaluate(spec: JobSpec, candidates: dict[str, Path], log: IO[str]) -> dict[str, dict]:
    """Held-out top-1 of the parent's and the candidate's bundle for every target, in one process."""
    order = [(t, "parent", spec.parent_bundles[t]) for t in sorted(candidates)]
    order += [(t, "candidate", candidates[t]) for t in sorted(candidates)]
    argv = [*spec.edgectl, "retrain", "evaluate", "--data", str(spec.holdout_data), "--json"]
    argv += [str(path) for _, _, path in order]
    stdout = _child(
        argv,
        what="edgectl retrain evaluate",
        log=log,
        timeout_s=STEP_TIMEOUT_S,
        cwd=spec.workdir,
        stdout_path=spec.path("evaluate.json"),
    )
    answer = json.loads(stdout)
    classes = max(len(spec.labels), max(answer["labels"], default=0) + 1)
    figures: dict[str, dict] = {}
    predictions: dict[tuple[str, str], list[int]] = {}
    for (target, role, _), row in zip(order, answer["results"], strict=True):
        entry = figures.setdefault(
            target,
            {
                "metric": row["metric"],
                "samples": row["samples"],
                "label_counts": _counts(answer["labels"], classes),
            },
        )
        entry[role] = row["value"]
        entry[f"{role}_counts"] = _counts(row["predictions"], classes)
        predictions[(target, role)] = row["predictions"]
    for target, entry in figures.items():  # how often the candidate says what its parent says
        pairs = list(zip(predictions[(target, "parent")], predictions[(target, "candidate")], strict=True))
        entry["agreement"] = round(100.0 * sum(a == b for a, b in pairs) / max(1, len(pairs)), 4)
    return figures


def _counts(classes: list[int], size: int) -> list[int]:
    """How many of `classes` fall in each class 0..size-1 (an index outside counts nowhere)."""
    counts = [0] * size
    for value in classes:
        if 0 <= value < size:
            counts[value] += 1
    return counts


def run(spec_path: str | Path) -> dict:
    """Run one attempt; the outcome (also written to outcome.json) as a dict."""
    spec = JobSpec.model_validate_json(Path(spec_path).read_text())
    started = time.monotonic()
    seconds: dict[str, float] = {}
    outcome = JobOutcome(ok=False, phase="training")
    with open(spec.path(LOG_FILE), "a", buffering=1) as log:
        log.write(
            f"job {spec.job_id} attempt {spec.attempt}: {spec.model} v{spec.parent_version} -> v{spec.new_version}\n"
        )
        try:
            _phase(spec, "training")
            result = _train(spec, log)
            seconds["training"] = round(time.monotonic() - started, 3)
            outcome.model, outcome.model_sha256 = result.model, _sha256(result.model)
            outcome.metrics = result.metrics
            outcome.phase = "building"
            _phase(spec, "building")
            mark = time.monotonic()
            outcome.bundles, outcome.build = _build(spec, result, log)
            seconds["building"] = round(time.monotonic() - mark, 3)
            outcome.phase = "evaluating"
            _phase(spec, "evaluating")
            mark = time.monotonic()
            outcome.evaluation = _evaluate(spec, outcome.bundles, log)
            seconds["evaluating"] = round(time.monotonic() - mark, 3)
            outcome.phase, outcome.ok = "done", True
            _phase(spec, "done")
        except StepFailed as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug here must still end the attempt with an outcome
            outcome.error = f"the job worker failed: {type(exc).__name__}: {exc}"
        outcome.seconds = {**seconds, "total": round(time.monotonic() - started, 3)}
        log.write(f"\noutcome: {'ok' if outcome.ok else outcome.error}\n")
    data = outcome.model_dump(mode="json")
    _write_json(spec.path(OUTCOME_FILE), data)
    return data


def main(argv: list[str]) -> int:
    run(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
