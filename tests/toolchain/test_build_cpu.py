"""`edgectl build --target cpu` end to end on the digits CNN: real export, real INT8, real ORT."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from tests.cli import build_flags, run


@pytest.fixture(scope="module")
def built(digits, keys, tmp_path_factory):
    """INT8 and FP32 bundles of the digits model, built once through the CLI."""
    out = tmp_path_factory.mktemp("bundles")
    from edgectl.main import main

    common = build_flags(
        keys, out, calib=digits.calib, val=digits.val, target="cpu", max_drop="0.5", bench_runs="20"
    )
    assert (
        main(["build", str(digits.model), "--precision", "int8", "--name", "digits", *map(str, common)]) == 0
    )
    lineage = ["--parent-version", "3", "--training-data", "s3://data/digits@v7", "--trigger", "drift"]
    lineage += ["--latency-budget-ms", "25"]
    fp32 = [
        "build",
        str(digits.model),
        "--precision",
        "fp32",
        "--name",
        "digits32",
        *lineage,
        *map(str, common),
    ]
    assert main(fp32) == 0
    return out


def test_int8_keeps_accuracy_and_is_smaller_than_fp32(built):
    from edgebundle import read_manifest

    int8 = read_manifest(built / "digits-v1-cpu")
    fp32 = read_manifest(built / "digits32-v1-cpu")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    report = int8.validation
    assert report.data == "val" and report.metric == "top1" and report.samples > 500
    assert report.reference["top1"] > 95.0
    assert report.drop_points <= 0.5
    assert report.passed
    assert int8.benchmark.artifact_bytes < fp32.benchmark.artifact_bytes / 3
    # the INT8 artifact really is quantized: QDQ nodes around per-channel int8 weights
    graph = onnx.load(str(built / "digits-v1-cpu" / "model.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 6
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) >= 12


def test_manifest_records_preprocessing_source_and_labels(built, digits):
    from edgebundle import read_manifest

    manifest = read_manifest(built / "digits-v1-cpu")
    assert manifest.preprocessing.color == "GRAY"
    assert manifest.preprocessing.layout == "NCHW"
    assert manifest.preprocessing.resize == (32, 32)
    assert manifest.postprocessing.labels == [str(i) for i in range(10)]
    assert manifest.source.kind == "torchscript"
    assert manifest.artifacts[0].inputs[0].shape == [1, 1, 32, 32]
    assert {f.path for f in manifest.files} == {
        "model.onnx",
        "labels.txt",
        "sample_input.npy",
        "sample_outputs.npz",
    }
    assert manifest.toolchain.versions["onnxruntime"]


def test_bundle_carries_a_health_sample_that_reproduces(built):
    """The device's pre-commit check: the sample, run again, gives the recorded outputs."""
    import numpy as np

    from edgebundle import read_manifest
    from toolchain.runners import open_runner

    bundle = built / "digits-v1-cpu"
    manifest = read_manifest(bundle)
    health = manifest.health
    sample = np.load(bundle / health.sample_input, allow_pickle=False)
    spec = manifest.artifacts[0].inputs[0]
    assert list(sample.shape) == spec.shape and sample.dtype.name == spec.dtype
    assert sample.std() > 0, "a real validation image, not zeros"
    expected = np.load(bundle / health.sample_outputs)
    (output,) = open_runner("onnxruntime", bundle / manifest.artifacts[0].path).run(sample)
    np.testing.assert_allclose(output, expected["output_0"], rtol=1e-5, atol=1e-5)
    assert health.max_latency_ms is None  # no --latency-budget-ms, no profile budget


def test_drift_reference_and_lineage_describe_the_validation_data(built, digits):
    from edgebundle import read_manifest

    manifest = read_manifest(built / "digits-v1-cpu")
    drift = manifest.drift_reference
    assert drift.samples == manifest.validation.samples
    (mean,), (std,) = drift.input_mean, drift.input_std  # one gray channel
    assert 0.0 < mean < 0.5 and 0.0 < std < 0.5  # dark background, bright strokes, scaled to [0, 1]
    assert sum(drift.confidence_hist) == drift.samples and len(drift.class_hist) == 10
    assert drift.confidence_hist[-1] > 0.8 * drift.samples  # a good classifier is sure of most digits
    assert min(drift.class_hist) > 0.05 * drift.samples  # every digit predicted, roughly balanced
    snapshots = manifest.lineage.data_snapshots
    assert set(snapshots) == {"calib", "val"} and all(len(v) == 64 for v in snapshots.values())
    assert manifest.lineage.parent_version is None


def test_lineage_and_latency_budget_come_from_the_flags(built):
    from edgebundle import read_manifest

    manifest = read_manifest(built / "digits32-v1-cpu")
    assert manifest.lineage.parent_version == 3 and manifest.lineage.trigger == "drift"
    assert manifest.lineage.training_data == "s3://data/digits@v7"
    assert manifest.health.max_latency_ms == 25.0


def test_verify_inspect_bench(built, keys, capsys):
    bundle = built / "digits-v1-cpu.edgebundle"
    result = run(capsys, "verify", bundle, "--public-key", keys[1], "--json")
    assert result.code == 0 and result.json()["verified"] is True
    result = run(capsys, "inspect", bundle, "--json")
    assert result.code == 0 and result.json()["manifest"]["target"] == "cpu"
    result = run(capsys, "bench", built / "digits-v1-cpu", "--runs", "10", "--json")
    assert result.code == 0
    bench = result.json()["benchmark"]
    assert bench["runs"] == 10 and bench["latency_ms_p50"] > 0 and bench["peak_memory_mb"] >= 0
    result = run(capsys, "bench", bundle, "--runs", "5", "--public-key", keys[1])
    assert result.code == 0 and "p50" in result.out


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.onnx", "labels.txt", "manifest.json", "manifest.sig"])
@pytest.mark.parametrize("where", [0, 1, -1])
def test_tampering_any_file_fails_verify(built, keys, capsys, tmp_path, name, where):
    copy = tmp_path / "bundle"
    shutil.copytree(built / "digits-v1-cpu", copy)
    size = (copy / name).stat().st_size
    _flip(copy / name, where if where >= 0 else size // 2)
    result = run(capsys, "verify", copy, "--public-key", keys[1])
    assert result.code != 0
    assert result.error_lines and result.error_lines[0].startswith("error:")


def test_tampering_every_byte_position_of_the_archive_fails(built, keys, capsys, tmp_path):
    archive = built / "digits-v1-cpu.edgebundle"
    size = archive.stat().st_size
    for offset in (20, size // 4, size // 2, size - 12):
        copy = tmp_path / f"b{offset}.edgebundle"
        shutil.copyfile(archive, copy)
        _flip(copy, offset)
        assert run(capsys, "verify", copy, "--public-key", keys[1]).code != 0, offset


def test_another_key_does_not_verify(built, capsys, tmp_path):
    from edgebundle import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    result = run(capsys, "verify", built / "digits-v1-cpu", "--public-key", other)
    assert result.code != 0 and "signature" in result.err


def _fp32_cpu_request(digits, keys, out):
    """A quick build request: the digits model at FP32 for cpu, without data, two benchmark runs."""
    from toolchain.pipeline import BuildRequest

    return BuildRequest(
        model=str(digits.model),
        targets=["cpu"],
        precision="fp32",
        input_shape=[1, 1, 32, 32],
        sign_key=keys[0],
        out=out,
        bench_runs=2,
    )


def test_export_is_cached_across_builds(digits, keys, tmp_path):
    from toolchain.pipeline import build

    request = _fp32_cpu_request(digits, keys, tmp_path)
    build(request)
    (second,) = build(request.model_copy(update={"version": 2}))
    assert second.export_cached


def test_build_runs_its_stages_in_order_each_timed_and_shown_once(digits, keys, tmp_path):
    """The build is the pipeline's stage lists: every stage that ran has its time in the result, in
    the lists' order, and its progress line was shown once; a stage not needed (the FP32 reference,
    without data to score it on) neither runs nor shows."""
    from toolchain.pipeline import BUILD_STAGES, TARGET_STAGES, Reporter, build

    class Recorder(Reporter):
        def __init__(self):
            self.lines = []

        def stage(self, text):
            self.lines.append(text)

    names = [stage.name for stage in (*BUILD_STAGES, *TARGET_STAGES)]
    assert len(names) == len(set(names))
    reporter = Recorder()
    (result,) = build(_fp32_cpu_request(digits, keys, tmp_path), reporter)
    ran = [name for name in names if name != "reference"]
    assert list(result.stage_seconds) == ran
    assert all(seconds >= 0 for seconds in result.stage_seconds.values())
    assert result.stage_seconds["export"] > 0 and result.stage_seconds["sign"] > 0
    assert reporter.lines == [
        "reading the model",
        "exporting to ONNX (opset 17)",
        "loading validation data",
        "cpu: converting to fp32",
        "cpu: benchmarking model.onnx",
        "cpu: recording the health-check sample",
        "cpu: signing the bundle",
    ]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work or staging left


def test_torch_export_program_builds(keys, tmp_path, capsys):
    """A .pt2 (torch.export) source refuses train()/eval(); the export still goes through, checked."""
    import torch

    from edgebundle import read_manifest
    from toolchain.demo import _make_model

    model, _ = _make_model()
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 32, 32),)), path)
    result = run(
        capsys,
        "build",
        path,
        "--target",
        "cpu",
        "--precision",
        "fp32",
        "--sign-key",
        keys[0],
        "--out",
        tmp_path / "out",
        "--bench-runs",
        "3",
    )
    assert result.code == 0, result.err
    manifest = read_manifest(tmp_path / "out" / "digits-v1-cpu")
    assert manifest.source.kind == "torch-export" and manifest.artifacts[0].inputs[0].shape == [1, 1, 32, 32]
