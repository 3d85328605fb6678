"""The last stages of a target: its manifest, from what the others measured, and the signed bundle."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from edgebase.deps import version_of
from edgebundle.manifest import (
    Artifact,
    Lineage,
    Manifest,
    Postprocessing,
    PruningLineage,
    SourceInfo,
    TensorSpec,
    ToolchainInfo,
)
from toolchain.stages.state import BuildState, TargetState


def write_manifest(build: BuildState, target: TargetState) -> None:
    """Copy the artifacts and extra files into the staging folder and describe them in the manifest."""
    from toolchain.runners import open_runner, runtime_for

    req, source, pre, converted, staging = (
        build.req,
        build.source,
        build.pre,
        target.converted,
        target.staging,
    )
    artifacts = []
    for item, report, bench in zip(converted.artifacts, target.reports, target.benches, strict=True):
        _copy_into(item.path, staging / item.path.name)
        art_in, art_out = open_runner(runtime_for(item.path), item.path).io_specs()
        artifacts.append(
            Artifact(
                path=item.path.name,
                role=item.role,
                format=item.format,
                precision=item.precision,
                inputs=[_with_layout(spec, build.shape, pre.layout) for spec in art_in],
                outputs=art_out,
                validation=report,
                benchmark=bench,
                boxes=item.boxes or ("pixels" if target.task == "detect" else None),
            )
        )
    primary = artifacts[0]
    if primary.inputs[0].layout is not None:  # the bundle's preprocessing feeds its primary artifact
        pre = pre.model_copy(update={"layout": primary.inputs[0].layout})
    if build.labels:
        (staging / "labels.txt").write_text("\n".join(build.labels) + "\n")
    for relative, extra in converted.extra_files.items():
        _copy_into(extra, staging / relative)
    target.manifest = Manifest(
        name=build.name,
        version=req.version,
        created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        target=target.profile.name,
        runtime=target.profile.runtime,
        precision=target.precision,
        artifacts=artifacts,
        preprocessing=pre,
        postprocessing=Postprocessing(task=target.task, labels=build.labels, nms=source.nms),
        source=SourceInfo(kind=source.kind, filename=source.filename, sha256=source.sha256),
        toolchain=ToolchainInfo(
            edgectl=version_of("edgectl"),
            converter=converted.converter or target.converter.name,
            versions={**converted.versions, **_source_versions(build.tensorflow_source, target.opset)},
        ),
        validation=primary.validation,
        benchmark=primary.benchmark,
        health=target.health,
        drift_reference=target.drift,
        lineage=Lineage(
            parent_version=req.parent_version,
            training_data=req.training_data,
            data_snapshots=build.snapshots,
            trigger=req.trigger,
            pruning=PruningLineage(**build.pruning.lineage()) if build.pruning else None,
        ),
        **converted.manifest_sections,
    )


def describe_sign(build: BuildState, target: TargetState) -> str:
    return f"{target.profile.name}: signing the bundle"


def sign(build: BuildState, target: TargetState) -> None:
    """Sign the staged folder and publish it (edgebundle renames it into place only once complete)."""
    from edgebundle import bundle_name_for, write_bundle

    name = bundle_name_for(build.name, build.req.version, target.profile.name)
    target.location = write_bundle(target.staging, target.manifest, build.private_key, build.req.out, name)


def _copy_into(source: Path, dest: Path) -> None:
    """Copy a file, or a folder of files (a Core ML .mlpackage), into the staging folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copyfile(source, dest)


def _source_versions(tensorflow_source: bool, opset: int) -> dict[str, str]:
    if tensorflow_source:
        return {"keras": version_of("keras")}
    return {"torch": version_of("torch"), "opset": str(opset)}


def _with_layout(spec: TensorSpec, source_shape: list[int], source_layout: str) -> TensorSpec:
    """Record which axis order an artifact's image input takes: the source's, or its channels-last twin."""
    if len(spec.shape) != 4 or len(source_shape) != 4:
        return spec
    if spec.shape == list(source_shape):
        return spec.model_copy(update={"layout": source_layout})
    n, c, h, w = source_shape
    if source_layout == "NCHW" and spec.shape == [n, h, w, c]:
        return spec.model_copy(update={"layout": "NHWC"})
    return spec
