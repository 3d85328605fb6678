"""Bad input: one line of error, a hint, a non-zero exit, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.cli import build_flags, run


def _base(digits, keys, out, **changes) -> list:
    return build_flags(keys, out, **{"calib": digits.calib, "val": digits.val, **changes})


def _assert_clean_failure(result, *needles: str) -> None:
    assert result.code != 0
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert "Traceback" not in result.err
    assert any(line.startswith("hint:") for line in result.err.splitlines()), result.err
    for needle in needles:
        assert needle in result.err, result.err


def _no_bundle_left(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert leftovers == [], leftovers


def test_unknown_target_suggests_the_close_one(digits, keys, tmp_path, capsys):
    result = run(
        capsys, "build", digits.model, "--target", "jetson-nan", *_base(digits, keys, tmp_path / "o")
    )
    assert result.code != 0
    assert "did you mean 'jetson-nano'" in result.err


def test_target_without_converter_says_so(digits, keys, tmp_path, capsys, monkeypatch):
    """A profile whose runtime has no converter in this installation (here: taken out of the table)."""
    from toolchain.converters import CONVERTERS

    monkeypatch.delitem(CONVERTERS, "tensorrt")
    result = run(
        capsys, "build", digits.model, "--target", "jetson-nano", *_base(digits, keys, tmp_path / "o")
    )
    _assert_clean_failure(result, "tensorrt converter", "not have yet")


def test_unsupported_precision(digits, keys, tmp_path, capsys):
    result = run(
        capsys, "build", digits.model, "-t", "cpu", "--precision", "fp16", *_base(digits, keys, tmp_path)
    )
    _assert_clean_failure(result, "does not support --precision fp16")


def test_missing_model_file(digits, keys, tmp_path, capsys):
    result = run(capsys, "build", tmp_path / "nope.onnx", "-t", "cpu", *_base(digits, keys, tmp_path / "o"))
    _assert_clean_failure(result, "does not exist")


def test_non_model_file(digits, keys, tmp_path, capsys):
    junk = tmp_path / "notes.pt"
    junk.write_text("this is not a model")
    result = run(capsys, "build", junk, "-t", "cpu", *_base(digits, keys, tmp_path / "o"))
    _assert_clean_failure(result, "is not a model edgectl can read")


def test_corrupt_onnx_file(digits, keys, tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 10)
    result = run(capsys, "build", broken, "-t", "cpu", *_base(digits, keys, tmp_path / "o"))
    _assert_clean_failure(result, "not a valid ONNX model")
    _no_bundle_left(tmp_path / "o")


class _SvdModel(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.svdvals(x.flatten(2)).flatten(1)


def test_export_failure_names_the_operator(digits, keys, tmp_path, capsys):
    path = tmp_path / "svd.pt"
    torch.jit.save(torch.jit.trace(_SvdModel(), torch.rand(1, 1, 32, 32)), str(path))
    result = run(
        capsys, "build", path, "-t", "cpu", "--precision", "fp32", *build_flags(keys, tmp_path / "o")
    )
    _assert_clean_failure(result, "aten::linalg_svd")
    _no_bundle_left(tmp_path / "o")


def test_calibration_of_the_wrong_shape(digits, keys, tmp_path, capsys):
    wrong = tmp_path / "calib.npy"
    np.save(wrong, np.zeros((8, 3, 16, 16), dtype=np.float32))
    result = run(
        capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, tmp_path / "o", calib=wrong)
    )
    _assert_clean_failure(result, "has shape [8, 3, 16, 16]", "[1, 1, 32, 32]")
    _no_bundle_left(tmp_path / "o")


def test_int8_without_calibration_data(digits, keys, tmp_path, capsys):
    result = run(
        capsys, "build", digits.model, "-t", "cpu", "--precision", "int8", *build_flags(keys, tmp_path / "o")
    )
    _assert_clean_failure(result, "never invents")


def test_empty_validation_folder(digits, keys, tmp_path, capsys):
    empty = tmp_path / "val"
    (empty / "cats").mkdir(parents=True)
    result = run(capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, tmp_path / "o", val=empty))
    _assert_clean_failure(result, "has no images in class sub-folders")
    _no_bundle_left(tmp_path / "o")


def test_output_directory_not_writable(digits, keys, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run(capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, blocker / "out"))
    _assert_clean_failure(result, "is not writable")


def test_missing_optional_dependency_names_the_extra(digits, keys, tmp_path, capsys, monkeypatch):
    from edgebase import deps

    real = deps.is_available
    monkeypatch.setattr(deps, "is_available", lambda module: module != "onnxruntime" and real(module))
    monkeypatch.setattr("toolchain.converters.base.is_available", deps.is_available)
    result = run(capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, tmp_path / "o"))
    _assert_clean_failure(result, "onnxruntime", "edgectl[build]")


def test_no_signing_key(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGECTL_SIGN_KEY", raising=False)
    result = run(capsys, "build", digits.model, "-t", "cpu", "--out", tmp_path)
    _assert_clean_failure(result, "always signed")


def test_bad_signing_key_file(digits, tmp_path, capsys):
    bad = tmp_path / "k.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    result = run(capsys, "build", digits.model, "-t", "cpu", "--sign-key", bad, "--out", tmp_path / "o")
    assert result.code != 0 and "not an unencrypted PEM private key" in result.err
    assert "nope" not in result.err  # key material is never echoed


def test_bad_input_shape_flag(digits, keys, tmp_path, capsys):
    result = run(
        capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, tmp_path / "o", shape="1,one,32")
    )
    _assert_clean_failure(result, "--input-shape")


def test_failure_after_conversion_leaves_no_partial_bundle(digits, keys, tmp_path, capsys, monkeypatch):
    from toolchain.errors import EdgectlError

    def broken_benchmark(*_args, **_kwargs):
        raise EdgectlError("benchmark exploded", hint="test")

    monkeypatch.setattr("toolchain.benchmark.benchmark", broken_benchmark)
    out = tmp_path / "o"
    result = run(capsys, "build", digits.model, "-t", "cpu", *_base(digits, keys, out))
    _assert_clean_failure(result, "benchmark exploded")
    _no_bundle_left(out)


def test_keys_are_never_overwritten(tmp_path, capsys):
    assert run(capsys, "keys", "generate", "--out", tmp_path).code == 0
    before = (tmp_path / "signing.key").read_bytes()
    result = run(capsys, "keys", "generate", "--out", tmp_path)
    assert result.code != 0 and "refusing to overwrite" in result.err
    assert (tmp_path / "signing.key").read_bytes() == before
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600


def test_verify_of_a_missing_bundle(keys, tmp_path, capsys):
    result = run(capsys, "verify", tmp_path / "nope.edgebundle", "--public-key", keys[1])
    assert result.code != 0 and "does not exist" in result.err
