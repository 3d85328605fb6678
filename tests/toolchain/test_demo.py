"""`edgectl demo`: trains on scikit-learn's digits and builds every available target, offline."""

from __future__ import annotations

from tests.cli import run


def test_demo_trains_builds_and_reports(tmp_path, capsys):
    result = run(capsys, "demo", "--out", tmp_path, "--epochs", "4", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["schema"] == "edgectl.demo/1"
    assert document["training_top1"] > 90.0
    runtimes = {r["runtime"] for r in document["rows"]} if "runtime" in document["rows"][0] else None
    for target in ("cpu", "rpi5", "android", "ios", "jetson-nano", "jetson-orin-nano", "stm32f746-disco"):
        assert target in document["targets"], target
    built = {r["target"] for r in document["rows"]}
    assert set(document["targets"]) <= built, "every target in the demo has a bundle"
    assert runtimes is None or {"onnxruntime", "tflite", "coreml", "tensorrt", "tflite-micro"} <= runtimes
    rows = {(r["target"], r["precision"]): r for r in document["rows"]}
    int8, fp32 = rows[("cpu", "int8")], rows[("cpu", "fp32")]
    assert int8["metric"] == "top1" and int8["drop_points"] <= 0.5
    assert int8["artifact_bytes"] < fp32["artifact_bytes"]
    for folder in ("data/calib", "data/val/0", "data/val/9", "keys", "bundles"):
        assert (tmp_path / folder).is_dir(), folder
    assert (tmp_path / "data" / "digits_cnn.pt").is_file()
    assert (tmp_path / "bundles" / "digits-cnn-v1-cpu.edgebundle").is_file()


def test_demo_table(tmp_path, capsys):
    flags = ["--target", "cpu", "--target", "nucleo-l432kc"]  # a phone-class and a microcontroller path
    result = run(capsys, "demo", "--out", tmp_path, "--epochs", "2", "--max-drop", "100", *flags)
    assert result.code == 0, result.err
    for column in ("target", "precision", "size", "FP32", "artifact", "drop", "p50 ms", "p95 ms"):
        assert column in result.out
    assert "nucleo-l432kc" in result.out and "cpu" in result.out
    assert (tmp_path / "bundles" / "digits-cnn-8x8-v1-nucleo-l432kc").is_dir()


def test_demo_refuses_a_mistyped_target_before_training(tmp_path, capsys):
    result = run(capsys, "demo", "--out", tmp_path, "--target", "rpi6")
    assert result.code == 2 and result.error_lines[0].startswith("error: unknown target 'rpi6'")
    assert "did you mean 'rpi4' or 'rpi5'" in result.error_lines[0]
    assert not (tmp_path / "data").exists()
