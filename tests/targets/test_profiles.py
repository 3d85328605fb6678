"""Target profiles: every file valid, facts right, user profiles and typos handled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from targets import ProfileError, UnknownTargetError, get_profile, load_profiles
from targets.registry import SHIPPED_DIR

REQUIRED = {"cpu", "jetson-nano", "jetson-orin-nano", "rpi4", "rpi5", "android", "ios",
            "stm32f746-disco", "esp32-s3", "nano33-ble"}  # fmt: skip


def test_every_shipped_profile_loads_and_matches_its_file():
    profiles = load_profiles()
    assert REQUIRED <= set(profiles)
    assert {p.stem for p in SHIPPED_DIR.glob("*.yaml")} == set(profiles)
    for name, profile in profiles.items():
        assert profile.name == name
        assert profile.default_precision in profile.precisions


def test_hardware_facts():
    nano = get_profile("jetson-nano")
    assert nano.default_precision == "fp16" and "int8" not in nano.precisions
    assert nano.hardware.accelerator.compute_capability == "5.3" and not nano.hardware.accelerator.fast_int8
    orin = get_profile("jetson-orin-nano")
    assert orin.default_precision == "int8" and orin.hardware.accelerator.fast_int8
    assert orin.hardware.accelerator.dla_cores == 0  # the Orin Nano module has no DLA
    assert get_profile("jetson-orin-nx").hardware.accelerator.dla_cores == 2
    assert (get_profile("stm32f746-disco").flash_kb, get_profile("stm32f746-disco").sram_kb) == (1024, 320)
    assert (get_profile("nano33-ble").flash_kb, get_profile("nano33-ble").sram_kb) == (1024, 256)
    assert get_profile("esp32-s3").sram_kb == 512
    assert get_profile("rpi4").threads == 4 and get_profile("rpi5").threads == 4
    assert {get_profile(n).runtime for n in ("stm32f746-disco", "esp32-s3", "nano33-ble")} == {"tflite-micro"}


def test_every_runtime_has_a_profile():
    from toolchain.converters import KNOWN_RUNTIMES

    assert {p.runtime for p in load_profiles().values()} == set(KNOWN_RUNTIMES)


@pytest.mark.parametrize(("typo", "suggestion"), [("jetson-nan", "'jetson-nano'"), ("rpi", "'rpi4', 'rpi5'"), ("andriod", "'android'")])
def test_did_you_mean(typo, suggestion):
    with pytest.raises(UnknownTargetError, match=f"did you mean .*{suggestion}"):
        get_profile(typo)


def test_no_suggestion_for_nonsense():
    with pytest.raises(UnknownTargetError) as info:
        get_profile("zzzzzz")
    assert "did you mean" not in str(info.value)


def _user_profile(directory: Path, name: str, **changes) -> Path:
    text = (SHIPPED_DIR / "rpi4.yaml").read_text().replace("name: rpi4", f"name: {name}")
    for key, value in changes.items():
        text += f"\n{key}: {value}\n"
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_user_profiles_add_and_override(tmp_path, monkeypatch):
    _user_profile(tmp_path, "my-board")
    _user_profile(tmp_path, "rpi4").write_text((tmp_path / "rpi4.yaml").read_text().replace("threads: 4", "threads: 2"))
    monkeypatch.setenv("EDGECTL_TARGETS_PATH", str(tmp_path))
    assert get_profile("my-board").runtime == "tflite"
    assert get_profile("rpi4").threads == 2


def test_bad_user_profile_names_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nruntime: warp-drive\n")
    monkeypatch.setenv("EDGECTL_TARGETS_PATH", str(tmp_path))
    with pytest.raises(ProfileError, match="broken.yaml"):
        load_profiles()


def test_file_name_must_match_profile_name(tmp_path, monkeypatch):
    _user_profile(tmp_path, "one").rename(tmp_path / "two.yaml")
    monkeypatch.setenv("EDGECTL_TARGETS_PATH", str(tmp_path))
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profiles()


def test_targets_package_is_light():
    code = "import targets, sys; assert not {'numpy', 'torch', 'onnx'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
