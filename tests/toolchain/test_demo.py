"""`edgectl demo`: trains on scikit-learn's digits and builds every available target, offline."""

from __future__ import annotations

from tests.cli import run


def test_demo_trains_builds_and_reports(tmp_path, capsys):
    result = run(capsys, "demo", "--out", tmp_path, "--epochs", "4", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["schema"] == "edgectl.demo/1"
    assert document["training_top1"] > 90.0
    assert "cpu" in document["targets"]
    rows = {(r["target"], r["precision"]): r for r in document["rows"]}
    int8, fp32 = rows[("cpu", "int8")], rows[("cpu", "fp32")]
    assert int8["metric"] == "top1" and int8["drop_points"] <= 0.5
    assert int8["artifact_bytes"] < fp32["artifact_bytes"]
    for folder in ("data/calib", "data/val/0", "data/val/9", "keys", "bundles"):
        assert (tmp_path / folder).is_dir(), folder
    assert (tmp_path / "data" / "digits_cnn.pt").is_file()
    assert (tmp_path / "bundles" / "digits-cnn-v1-cpu.edgebundle").is_file()


def test_demo_table(tmp_path, capsys):
    result = run(capsys, "demo", "--out", tmp_path, "--epochs", "2", "--max-drop", "100")
    assert result.code == 0, result.err
    for column in ("target", "precision", "size", "FP32", "artifact", "drop", "p50 ms", "p95 ms"):
        assert column in result.out
