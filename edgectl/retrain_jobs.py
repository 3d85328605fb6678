"""`edgectl retrain run | jobs | job | cancel | drift | evaluate`: the retraining jobs on the registry, the
fleet's drift scores, and the held-out comparison a job runs. `edgectl.retrain` holds the group and its
policy, sampling and labelling commands, and attaches these."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgectl.fleet import DEFAULT_URL, AsJson, RegistryToken, RegistryUrl, registry_client
from edgectl.retrain import ModelArg

if TYPE_CHECKING:
    from registry_api.retraining import JobInfo


def register(group: typer.Typer) -> None:
    group.command("run")(run_command)
    group.command("jobs")(jobs_command)
    group.command("job")(job_command)
    group.command("cancel")(cancel_command)
    group.command("drift")(drift_command)
    group.command("evaluate")(evaluate_command)


# --------------------------------------------------------------------------- jobs and drift


def _job_text(job: JobInfo) -> str:
    lines = [
        f"job {job.id} {job.model}: {job.state}"
        + (f" ({job.phase})" if job.phase and job.state == "running" else "")
        + f", {job.trigger} trigger, v{job.parent_version} -> "
        + (f"v{job.new_version}" if job.new_version else "?")
        + f", attempt {job.attempt} on {job.runner or '-'}"
    ]
    for target, figures in sorted((job.evaluation or {}).items()):
        lines.append(
            f"  {target}: held-out {figures['metric']} parent {figures.get('parent', float('nan')):.2f}, "
            f"candidate {figures.get('candidate', float('nan')):.2f} ({figures['samples']} samples)"
        )
    if job.reason:
        lines.append(f"  {job.reason}")
    if job.rollout_id:
        lines.append(f"  rollout {job.rollout_id}: edgectl rollout status {job.rollout_id}")
    return "\n".join(lines)


def run_command(
    model: ModelArg,
    parent: Annotated[
        int | None, typer.Option("--parent", help="Version to start from (default: the fleet's).", min=1)
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the job.")] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Queue a retraining job for MODEL now, with its policy's entry point."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        job = client.retrain(model, parent, reason)
    emit_or_print(as_json, "retrain-job", job, _job_text(job))


def jobs_command(
    model: Annotated[str | None, typer.Option("--model", help="Only this model's.")] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="queued, running, succeeded, rejected, failed...")
    ] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Retraining jobs, newest first."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        jobs = client.jobs(model, state)
    emit_or_print(as_json, "retrain-jobs", {"jobs": jobs}, "\n".join(_job_text(j) for j in jobs) or "no jobs")


def job_command(
    job_id: Annotated[int, typer.Argument(help="Job id (edgectl retrain jobs).", min=1)],
    log: Annotated[bool, typer.Option("--log", help="Print the job's log too.")] = False,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """One job: trigger, held-out figures, outcome (and its log)."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        job = client.job(job_id)
        text = client.job_log(job_id) if log else None
    emit_or_print(
        as_json,
        "retrain-job",
        {**job.model_dump(mode="json"), "log": text},
        _job_text(job) + (f"\n{text}" if text else ""),
    )


def cancel_command(
    job_id: Annotated[int, typer.Argument(help="Job id.", min=1)],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a queued or running job."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        job = client.cancel_job(job_id)
    emit_or_print(as_json, "retrain-job", job, _job_text(job))


def drift_command(
    model: ModelArg,
    version: Annotated[int | None, typer.Option("--version", help="Only this version.", min=1)] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only this device group.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="The newest N scores.", min=1, max=10_000)] = 20,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """MODEL's fleet drift scores against its build-time reference, oldest first.

    Input drift (what a drift trigger watches) and the prediction mix are apart: a skewed mix of classes
    alone is no drift. Windows of fewer than 50 inferences are not scored."""
    from rich.table import Table

    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        points = client.drift(model, version=version, group=group, limit=limit)
    if as_json:
        emit_json("retrain-drift", {"points": points})
        return
    table = Table(
        "time (UTC)",
        "version",
        "group",
        "devices",
        "samples",
        "input drift (PSI confidence)",
        "prediction mix (PSI class)",
        "mean shift z",
    )
    for p in points:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.at)),
            f"v{p.model_version}",
            p.group or "-",
            str(p.devices),
            str(p.samples),
            f"{p.psi_confidence:.3f}",
            f"{p.psi_class:.3f}",
            f"{p.mean_shift_z:.1f}",
        )
    console.print(table)


# --------------------------------------------------------------------------- evaluation (what jobs run)


def evaluate_command(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle archives or folders (classifiers).")],
    data: Annotated[
        Path, typer.Option("--data", help="Labeled .npz: x (model inputs) and y (class indices).")
    ],
    as_json: AsJson = False,
) -> None:
    """Top-1 of each bundle on labeled data, one sample at a time, with the build's runners."""
    from edgectl.output import console, emit_json
    from toolchain.errors import UserInputError
    from toolchain.retrain import evaluate_bundle, load_labeled

    for bundle in bundles:
        if not bundle.exists():
            raise UserInputError(
                f"bundle {bundle} does not exist", hint="pass .edgebundle archives or bundle folders"
            )
    x, y = load_labeled(data)
    results = [evaluate_bundle(bundle, x, y) for bundle in bundles]
    rows = [
        {
            "bundle": str(r.bundle),
            "name": r.name,
            "version": r.version,
            "target": r.target,
            "metric": r.metric,
            "value": r.value,
            "samples": r.samples,
            "predictions": r.predictions,
        }
        for r in results
    ]
    if as_json:
        emit_json("retrain-evaluate", {"data": str(data), "labels": [int(v) for v in y], "results": rows})
        return
    for r in results:
        console.print(
            f"{r.name} v{r.version} {r.target}: {r.metric} {r.value:.2f} on {r.samples} samples ({r.bundle.name})"
        )
