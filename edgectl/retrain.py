"""`edgectl retrain ...`: the retraining loop on the registry. This module holds the group and its policy,
sample-upload, samples, label and source commands; `edgectl.retrain_jobs` adds the jobs, drift and
`evaluate` (the held-out comparison a job runs). See docs/retraining.md."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgectl.fleet import DEFAULT_URL, AsJson, RegistryToken, RegistryUrl, registry_client

if TYPE_CHECKING:
    from registry_api.retraining import PolicyInfo

retrain_app = typer.Typer(
    help="The retraining loop: drift, sample upload, labels, policies and jobs.", no_args_is_help=True
)
policy_app = typer.Typer(
    help="A model's retraining policy (when to retrain, with what).", no_args_is_help=True
)
retrain_app.add_typer(policy_app, name="policy")
ModelArg = Annotated[str, typer.Argument(help="Model name.")]
SAMPLE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
POLICY_HINT = "see docs/retraining.md for the policy format"


def register(app: typer.Typer) -> None:
    from edgectl import retrain_jobs

    retrain_jobs.register(retrain_app)
    app.add_typer(retrain_app, name="retrain")


# --------------------------------------------------------------------------- policies


def read_policy(path: Path) -> dict[str, Any]:
    """A policy file (YAML or JSON) checked against the registry's schema: one error line on any problem."""
    import yaml
    from pydantic import ValidationError

    from registry_api.retraining import RetrainingPolicy
    from toolchain.errors import UserInputError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"policy file {path} does not exist", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read policy file {path}: {exc}", hint="check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserInputError(f"policy {path} is not valid YAML{line}", hint="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise UserInputError(f"policy {path} must be a mapping of fields", hint=POLICY_HINT)
    try:
        policy = RetrainingPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "policy"
        message = first["msg"].removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = "unknown field"
        raise UserInputError(f"policy {path}: {where}: {message}", hint=POLICY_HINT) from None
    return policy.model_dump(mode="json")


def _policy_text(info: PolicyInfo) -> str:
    policy, status = info.policy, info.status
    entry = policy.entry_point
    triggers = ", ".join(k for k, v in policy.triggers.model_dump().items() if v) or "by hand only"
    lines = [
        f"{info.model} policy revision {info.revision} ({'enabled' if policy.enabled else 'disabled'}), "
        f"by {info.updated_by}",
        f"entry point: {entry.callable or ' '.join(entry.command)}",
        f"triggers: {triggers}; groups: {', '.join(policy.groups) or 'all'}; "
        f"min labeled samples {policy.min_labeled_samples}; cooldown {policy.cooldown_s:g} s",
    ]
    if status:
        lines.append(
            f"labeled samples: {status.labeled_samples} ({status.new_labeled_samples} new); "
            f"active job: {status.active_job or 'none'}"
        )
        if status.blocked:
            lines.append(f"blocked: {status.blocked}")
        for series in status.drift:
            lines.append(f"  drift v{series['version']} {series['group'] or '(no group)'}: {series}")
    return "\n".join(lines)


@policy_app.command("set")
def policy_set(
    model: ModelArg,
    file: Annotated[Path, typer.Argument(help="The policy, YAML or JSON (docs/retraining.md).")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Set MODEL's retraining policy from a file (checked here first, then by the registry)."""
    from edgectl.output import emit_or_print

    policy = read_policy(file)
    with registry_client(registry, token) as client:
        info = client.set_policy(model, policy)
    emit_or_print(as_json, "retrain-policy", info, _policy_text(info))


@policy_app.command("show")
def policy_show(
    model: ModelArg, registry: RegistryUrl = DEFAULT_URL, token: RegistryToken = None, as_json: AsJson = False
) -> None:
    """MODEL's retraining policy, and what its triggers see now."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        info = client.policy(model)
    emit_or_print(as_json, "retrain-policy", info, _policy_text(info))


@policy_app.command("delete")
def policy_delete(model: ModelArg, registry: RegistryUrl = DEFAULT_URL, token: RegistryToken = None) -> None:
    """Remove MODEL's retraining policy (its jobs stay on record)."""
    from edgectl.output import emit_or_print

    with registry_client(registry, token) as client:
        client.delete_policy(model)
    emit_or_print(False, "", {}, f"{model}: retraining policy removed")


# --------------------------------------------------------------------------- sample upload and labels


@retrain_app.command("sampling")
def sampling_command(
    group: Annotated[str, typer.Argument(help="Device group.")],
    enable: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Switch sample upload on or off.", show_default=False),
    ] = None,
    max_per_day: Annotated[
        int | None, typer.Option("--max-per-day", help="Samples per device per UTC day.")
    ] = None,
    max_confidence: Annotated[
        float | None, typer.Option("--max-confidence", help="Only inputs whose top confidence is below this.")
    ] = None,
    per_upload: Annotated[
        int | None, typer.Option("--per-upload", help="The least confident N kept between uploads.")
    ] = None,
    interval: Annotated[float | None, typer.Option("--interval", help="Seconds between uploads.")] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Show, or change, a device group's sample upload (off unless switched on here)."""
    from pydantic import ValidationError

    from edgectl.output import emit_or_print
    from edgewire.device_api import SampleUploadSettings
    from toolchain.errors import UserInputError

    changes = {
        "enabled": enable,
        "max_per_day": max_per_day,
        "max_confidence": max_confidence,
        "per_upload": per_upload,
        "upload_interval_s": interval,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    with registry_client(registry, token) as client:
        info = client.sampling(group)
        if changes:
            flags = {"max_per_day": "--max-per-day", "max_confidence": "--max-confidence"}
            flags |= {"per_upload": "--per-upload", "upload_interval_s": "--interval"}
            try:
                settings = SampleUploadSettings.model_validate({**info.samples.model_dump(), **changes})
            except ValidationError as exc:
                first = exc.errors()[0]
                flag = flags.get(str(first["loc"][0]), str(first["loc"][0]))
                raise UserInputError(
                    f"{flag}: {first['msg']}", hint="see edgectl retrain sampling --help"
                ) from None
            info = client.set_sampling(group, settings.model_dump(mode="json"))
    s = info.samples
    emit_or_print(
        as_json,
        "retrain-sampling",
        info,
        f"group {group}: sample upload {'ON' if s.enabled else 'off'}; at most {s.max_per_day} a device a day, "
        f"confidence below {s.max_confidence:g}, {s.per_upload} per upload every {s.upload_interval_s:g} s",
    )


def _preview(array: Any, path: Path) -> bool:
    """A PNG a person can look at (min-max scaled), for a 1- or 3-channel image input; False otherwise."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError:
        return False
    image = np.asarray(array, dtype=np.float32)
    image = image[0] if image.ndim == 4 else image
    if image.ndim != 3:
        return False
    if image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.shape[-1] not in (1, 3):
        return False
    low, high = float(image.min()), float(image.max())
    pixels = ((image - low) / (high - low or 1.0) * 255).round().astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return True


@retrain_app.command("samples")
def samples_command(
    model: ModelArg,
    labeled: Annotated[
        bool | None,
        typer.Option("--labeled/--unlabeled", help="Only labeled, or only unlabeled.", show_default=False),
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only this device group.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1, max=10_000)] = 1000,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export", help="Write each input (.npy, and .png for images) and a labels.csv to fill in."
        ),
    ] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Samples devices uploaded for MODEL; with --export, files to label (fill labels.csv's label column)."""
    import io

    import numpy as np
    from rich.table import Table

    from edgectl.output import console, emit_json

    with registry_client(registry, token) as client:
        rows = client.samples(model, labeled=labeled, group=group, limit=limit)
        if export is not None:
            export.mkdir(parents=True, exist_ok=True)
            with open(export / "labels.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["sample_id", "predicted_label", "confidence", "label"])
                for row in rows:
                    data = client.sample_input(row.sample_id)
                    (export / f"{row.sample_id}.npy").write_bytes(data)
                    _preview(np.load(io.BytesIO(data), allow_pickle=False), export / f"{row.sample_id}.png")
                    writer.writerow(
                        [
                            row.sample_id,
                            row.predicted_label or row.predicted_class,
                            f"{row.confidence:.4f}",
                            row.label_name or "",
                        ]
                    )
    if as_json:
        emit_json("retrain-samples", {"samples": rows, "exported_to": str(export) if export else None})
        return
    table = Table("sample", "device", "group", "version", "confidence", "predicted", "label")
    for row in rows[:50]:
        table.add_row(
            row.sample_id[:12],
            row.device or "-",
            row.group or "-",
            f"v{row.model_version}",
            f"{row.confidence:.3f}",
            str(row.predicted_label or row.predicted_class),
            row.label_name or ("-" if row.label is None else str(row.label)),
        )
    console.print(table)
    console.print(f"{len(rows)} samples" + (f"; exported to {export} (fill in labels.csv)" if export else ""))


def read_label_file(path: Path) -> list[dict[str, Any]]:
    """Rows of (sample_id, label) from a CSV with those columns, JSON lines, or a JSON list; rows with an
    empty label are skipped (an exported labels.csv not yet filled in everywhere)."""
    from toolchain.errors import UserInputError

    hint = "a CSV with columns sample_id,label (edgectl retrain samples --export writes one), or JSON lines"
    if not path.is_file():
        raise UserInputError(f"label file {path} does not exist", hint="check the path")
    text = path.read_text(encoding="utf-8", errors="replace")
    items: list[tuple[int, Any, Any]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        stripped = text.strip()
        if path.suffix.lower() == ".json" and stripped.startswith(("[", "{")):
            try:
                document = json.loads(stripped)
            except ValueError as exc:
                raise UserInputError(f"{path} is not valid JSON: {exc}", hint=hint) from None
            records = document.get("labels", []) if isinstance(document, dict) else document
            lines = list(enumerate(records, 1))
        else:
            lines = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        lines.append((number, json.loads(line)))
                    except ValueError:
                        raise UserInputError(f"{path} line {number} is not JSON", hint=hint) from None
        for number, record in lines:
            if not isinstance(record, dict) or "sample_id" not in record or "label" not in record:
                raise UserInputError(f"{path} entry {number} needs sample_id and label", hint=hint)
            items.append((number, record["sample_id"], record["label"]))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"sample_id", "label"} <= set(reader.fieldnames):
            raise UserInputError(f"{path} has no sample_id and label columns in its header", hint=hint)
        items = [(number, row["sample_id"], row["label"]) for number, row in enumerate(reader, 2)]
    labels = []
    for number, sample_id, label in items:
        if label is None or (isinstance(label, str) and not label.strip()):
            continue
        if not isinstance(sample_id, str) or not SAMPLE_ID_RE.match(sample_id.strip()):
            raise UserInputError(
                f"{path} line {number}: {sample_id!r} is not a sample id (32 hex digits)", hint=hint
            )
        if (
            isinstance(label, bool)
            or not isinstance(label, (str, int))
            or (isinstance(label, int) and label < 0)
        ):
            raise UserInputError(
                f"{path} line {number}: label {label!r} is not a class name or index", hint=hint
            )
        labels.append(
            {"sample_id": sample_id.strip(), "label": label.strip() if isinstance(label, str) else label}
        )
    if not labels:
        raise UserInputError(f"{path} labels no sample", hint="fill in the label column of at least one row")
    return labels


@retrain_app.command("label")
def label_command(
    model: ModelArg,
    file: Annotated[Path, typer.Argument(help="CSV (sample_id,label), JSON lines, or a JSON list.")],
    source: Annotated[str | None, typer.Option("--source", help="Who labeled (a person, a system).")] = None,
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Upload labels for MODEL's samples: all or nothing (an unknown sample or class refuses the file)."""
    from edgectl.output import emit_or_print

    labels = read_label_file(file)
    with registry_client(registry, token) as client:
        result = client.upload_labels(model, labels, source)
    emit_or_print(
        as_json,
        "retrain-labels",
        result,
        f"{model}: {result.labeled} newly labeled, {result.changed} changed, {result.unchanged} unchanged; "
        f"{result.total_labeled} labeled samples in all",
    )


@retrain_app.command("source")
def source_command(
    model: ModelArg,
    version: Annotated[int, typer.Argument(help="The version built from FILE.", min=1)],
    file: Annotated[Path, typer.Argument(help="The exact model file given to edgectl build.")],
    registry: RegistryUrl = DEFAULT_URL,
    token: RegistryToken = None,
    as_json: AsJson = False,
) -> None:
    """Upload the source model (the weights) of a version: what retraining jobs fine-tune from."""
    from edgectl.output import emit_or_print
    from toolchain.errors import UserInputError

    if not file.is_file():
        raise UserInputError(
            f"{file} is not a file", hint="pass the model file edgectl build took (.pt, .onnx, ...)"
        )
    with registry_client(registry, token) as client:
        result = client.upload_source(model, version, file)
    emit_or_print(
        as_json,
        "retrain-source",
        result,
        f"{model} v{version}: source {result.source_sha256[:16]}… stored",
    )
