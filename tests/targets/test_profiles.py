"""Target profiles: every file valid, facts right, user profiles and typos handled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from targets import ProfileError, TargetProfile, UnknownTargetError, get_profile, load_profiles
from targets.registry import ENV_VAR, SHIPPED_DIR
from targets.schema import ARTIFACT_FOR_RUNTIME, Runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"cpu", "jetson-nano", "jetson-orin-nano", "jetson-orin-nx", "rpi4", "rpi5", "android", "ios",
            "stm32f746-disco", "esp32-s3", "nano33-ble"}  # fmt: skip
MCUS = ("stm32f746-disco", "esp32-s3", "nano33-ble")


@pytest.fixture(autouse=True)
def _no_user_profiles(monkeypatch):
    """Tests see the shipped profiles only, whatever the developer's environment holds."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def _user_profile(directory: Path, name: str, text: str | None = None) -> Path:
    """A copy of the shipped rpi4 profile renamed to `name` (or the given text), in `directory`."""
    if text is None:
        data = yaml.safe_load((SHIPPED_DIR / "rpi4.yaml").read_text())
        data["name"] = name
        text = yaml.safe_dump(data)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


# --- shipped profiles ---------------------------------------------------------------------


def test_every_shipped_profile_loads_and_matches_its_file():
    profiles = load_profiles()
    assert set(profiles) >= REQUIRED
    stems = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
    assert len(stems) == len(set(stems)) == len(profiles)
    assert set(stems) == set(profiles)
    for name, profile in profiles.items():
        assert isinstance(profile, TargetProfile)
        assert profile.name == name
        assert profile.default_precision in profile.precisions
        assert profile.artifact_format == ARTIFACT_FOR_RUNTIME[profile.runtime]
        assert profile.references, f"{name} cites no sources"
        assert all(ref.startswith("https://") for ref in profile.references)


def test_every_runtime_in_the_schema_has_a_shipped_profile():
    assert {p.runtime for p in load_profiles().values()} == set(get_args(Runtime))


def test_summary_is_a_flat_row():
    row = get_profile("jetson-nano").summary()
    assert set(row) == {"name", "runtime", "artifact_format", "default_precision", "precisions",
                        "memory_mb", "storage_mb", "flash_kb", "sram_kb", "threads"}  # fmt: skip
    assert all(isinstance(v, (str, int, list, type(None))) for v in row.values())
    assert row["precisions"] == ["fp32", "fp16"]


def test_profiles_are_frozen():
    with pytest.raises(ValueError):
        get_profile("cpu").threads = 2  # type: ignore[misc]


# --- hardware facts -----------------------------------------------------------------------


def test_jetson_nano_has_no_fast_int8():
    nano = get_profile("jetson-nano")
    assert nano.runtime == "tensorrt" and nano.artifact_format == "onnx+tensorrt-plan"
    assert nano.default_precision == "fp16" and nano.precisions == ["fp32", "fp16"]
    gpu = nano.hardware.accelerator
    assert gpu is not None and gpu.compute_capability == "5.3"
    assert gpu.fast_fp16 and not gpu.fast_int8 and gpu.dla_cores == 0
    assert nano.memory_mb == 4096
    assert nano.opset_ceiling == 13  # TensorRT 8.2 ONNX parser
    assert nano.runtime_versions["tensorrt"] == "8.2"


def test_orin_nano_has_fast_int8_and_no_dla():
    orin = get_profile("jetson-orin-nano")
    gpu = orin.hardware.accelerator
    assert orin.default_precision == "int8" and "int8" in orin.precisions
    assert gpu is not None and gpu.compute_capability == "8.7" and gpu.fast_int8
    assert gpu.dla_cores == 0  # unlike Orin NX and AGX Orin
    assert orin.opset_ceiling == 20 and orin.runtime_versions["tensorrt"] == "10.3"


def test_orin_nx_represents_dla():
    nx = get_profile("jetson-orin-nx")
    assert nx.hardware.accelerator is not None and nx.hardware.accelerator.dla_cores == 2
    assert nx.options["use_dla"] is True


def test_cpu_profile():
    cpu = get_profile("cpu")
    assert (cpu.runtime, cpu.artifact_format, cpu.default_precision) == ("onnxruntime", "onnx", "int8")
    assert cpu.threads is None and cpu.opset_ceiling == 28  # ONNX Runtime 1.32's real limit


@pytest.mark.parametrize(
    ("name", "soc", "cores", "memory_mb"), [("rpi4", "BCM2711", 4, 4096), ("rpi5", "BCM2712", 4, 8192)]
)
def test_raspberry_pis(name, soc, cores, memory_mb):
    pi = get_profile(name)
    assert soc in pi.hardware.soc and pi.hardware.cpu_cores == cores
    assert pi.threads == 4 and pi.memory_mb == memory_mb
    assert (pi.runtime, pi.default_precision, pi.precisions) == ("tflite", "int8", ["fp32", "fp16", "int8"])


def test_mobile_profiles():
    android = get_profile("android")
    assert android.runtime == "tflite" and android.default_precision == "int8"
    assert android.options["delegates"] == ["gpu", "nnapi", "xnnpack"]
    assert android.options["app_download_limit_mb"] > 0
    ios = get_profile("ios")
    assert (ios.runtime, ios.artifact_format, ios.default_precision) == ("coreml", "mlpackage", "fp16")
    assert ios.options["minimum_deployment_target"] == "iOS16" and ios.options["compute_units"] == "ALL"
    assert ios.hardware.accelerator is not None and ios.hardware.accelerator.kind == "neural-engine"


@pytest.mark.parametrize(
    ("name", "flash_kb", "sram_kb"),
    [("stm32f746-disco", 1024, 320), ("esp32-s3", 8192, 512), ("nano33-ble", 1024, 256)],
)
def test_mcu_budgets(name, flash_kb, sram_kb):
    mcu = get_profile(name)
    assert (mcu.flash_kb, mcu.sram_kb) == (flash_kb, sram_kb)
    assert (mcu.runtime, mcu.artifact_format) == ("tflite-micro", "tflite-micro")
    assert mcu.default_precision == "int8" and mcu.precisions == ["int8"]
    assert mcu.threads == 1
    assert mcu.input_constraints.static_shapes and mcu.input_constraints.layouts == ["NHWC"]
    assert mcu.memory_mb is None


def test_mcu_clocks():
    assert "216 MHz" in get_profile("stm32f746-disco").hardware.cpu
    assert "64 MHz" in get_profile("nano33-ble").hardware.cpu
    esp = get_profile("esp32-s3")
    assert esp.options["psram_kb"] == 8192 and "N8R8" in esp.options["module"]


# --- did you mean -------------------------------------------------------------------------


def test_did_you_mean_one():
    with pytest.raises(UnknownTargetError) as info:
        get_profile("jetson-nan")
    assert str(info.value) == (
        "unknown target 'jetson-nan'; did you mean 'jetson-nano'? (run 'edgectl targets' to list them)"
    )


def test_did_you_mean_several():
    with pytest.raises(UnknownTargetError) as info:
        get_profile("rpi")
    assert "did you mean 'rpi4' or 'rpi5'?" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("andriod", "'android'"), ("Jetson-Nano", "'jetson-nano'"), ("stm32", "'stm32f746-disco'")],
)
def test_did_you_mean_other_typos(typo, suggestion):
    with pytest.raises(UnknownTargetError, match=f"did you mean {suggestion}\\?"):
        get_profile(typo)


def test_no_suggestion_for_nonsense():
    with pytest.raises(UnknownTargetError) as info:
        get_profile("zzzz")
    assert str(info.value) == "unknown target 'zzzz' (run 'edgectl targets' to list them)"


def test_unknown_target_is_a_value_error():
    assert issubclass(UnknownTargetError, ValueError) and issubclass(ProfileError, ValueError)


# --- user profiles ------------------------------------------------------------------------


def test_user_profile_is_listed_and_overrides(tmp_path, monkeypatch):
    _user_profile(tmp_path, "my-board")
    data = yaml.safe_load((SHIPPED_DIR / "rpi4.yaml").read_text())
    data["threads"] = 2
    _user_profile(tmp_path, "rpi4", yaml.safe_dump(data))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    profiles = load_profiles()
    assert "my-board" in profiles and profiles["my-board"].runtime == "tflite"
    assert get_profile("my-board").name == "my-board"
    assert get_profile("rpi4").threads == 2
    # the environment is read on every call: without it, the shipped profile is back
    monkeypatch.delenv(ENV_VAR)
    assert "my-board" not in load_profiles()
    assert get_profile("rpi4").threads == 4


def test_several_folders_in_the_path_and_extra_dirs(tmp_path, monkeypatch):
    first, second, extra = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (first, second, extra):
        d.mkdir()
    _user_profile(first, "board-a")
    _user_profile(second, "board-b")
    _user_profile(extra, "board-c")
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(first), "", str(second)]))
    assert {"board-a", "board-b"} <= set(load_profiles())
    assert {"board-a", "board-b", "board-c"} <= set(load_profiles(extra_dirs=[extra]))


def test_bad_yaml_names_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nruntime: [unclosed\n")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(ProfileError, match=r"broken\.yaml") as info:
        load_profiles()
    assert "\n" not in str(info.value)


def test_invalid_profile_names_the_file_and_the_field(tmp_path, monkeypatch):
    data = yaml.safe_load((SHIPPED_DIR / "rpi4.yaml").read_text())
    data.update(name="warp", runtime="warp-drive")
    _user_profile(tmp_path, "warp", yaml.safe_dump(data))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(ProfileError) as info:
        get_profile("rpi4")  # one broken user profile is reported, not skipped
    message = str(info.value)
    assert "warp.yaml" in message and "runtime" in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"default_precision": "int8", "precisions": ["fp32"]}, "default_precision"),
        ({"artifact_format": "onnx"}, "artifact_format"),
        ({"surprise": 1}, "surprise"),
        ({"name": "Bad_Name"}, "name"),
        ({"flash_kb": None}, "flash_kb"),
    ],
)
def test_schema_rejects(tmp_path, change, field):
    data = yaml.safe_load((SHIPPED_DIR / "nano33-ble.yaml").read_text())
    data.update(change)
    path = _user_profile(tmp_path, "nano33-ble", yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=field):
        load_profiles(extra_dirs=[path.parent])


@pytest.mark.parametrize(
    ("profile", "options", "field"),
    [
        ("jetson-nano", {"workspce_mb": 512}, "workspce_mb"),  # a typo no longer passes silently
        ("jetson-nano", {"workspace_mb": 0}, "workspace_mb"),
        ("ios", {"compute_units": "NEURAL_ONLY"}, "compute_units"),
        ("android", {"delegates": ["tpu"]}, "delegates"),
        (
            "cpu",
            {"execution_provider": "CUDAExecutionProvider"},
            "execution_provider",
        ),  # never read, so refused
        ("nano33-ble", {"flash_reserved_kb": -1}, "flash_reserved_kb"),
    ],
)
def test_options_are_typed_per_runtime(tmp_path, profile, options, field):
    data = yaml.safe_load((SHIPPED_DIR / f"{profile}.yaml").read_text())
    data["options"] = {**(data.get("options") or {}), **options}
    path = _user_profile(tmp_path, profile, yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=rf"options\.{field}") as info:
        load_profiles(extra_dirs=[path.parent])
    assert "profile's options:" in str(info.value)  # the keys that runtime does take


def test_runtime_options_fill_the_defaults():
    nano, nx, android = get_profile("jetson-nano"), get_profile("jetson-orin-nx"), get_profile("android")
    assert nano.runtime_options().workspace_mb == 1024 and nano.runtime_options().use_dla is False
    assert nx.runtime_options().allow_gpu_fallback is True
    assert android.runtime_options().delegates == ["gpu", "nnapi", "xnnpack"]
    assert get_profile("rpi5").runtime_options().delegates == ["xnnpack"]
    assert get_profile("cpu").options == {}


def test_file_stem_must_match_profile_name(tmp_path, monkeypatch):
    _user_profile(tmp_path, "one").rename(tmp_path / "two.yaml")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(ProfileError, match=r"two\.yaml.*must match the file name"):
        load_profiles()


def test_missing_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ProfileError, match="nowhere"):
        load_profiles()


# --- light import -------------------------------------------------------------------------


def test_targets_package_is_light():
    code = (
        "import sys, targets\n"
        "targets.load_profiles()\n"
        "heavy = {'numpy', 'torch', 'onnx', 'onnxruntime', 'tensorflow'} & set(sys.modules)\n"
        "assert not heavy, sorted(heavy)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop(ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
