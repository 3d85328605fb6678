"""The device-side engine contract, without TensorRT: plans, trtexec lines, the engine cache and its key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgetrt import EngineCache, EngineMismatch, engine_key, make_plan, plan_hash, trtexec_command
from edgetrt.plan import version_in_range, version_range
from targets import get_profile


def _plan(target: str = "jetson-orin-nano", precision: str = "int8", **options):
    profile = get_profile(target)
    return make_plan(
        onnx="model.onnx",
        precision=precision,
        explicit_quantization=precision == "int8",
        input_shapes={"images": [1, 3, 96, 96]},
        opset=min(17, profile.opset_ceiling),
        options={**profile.options, **options},
        tensorrt_version=profile.runtime_versions.get("tensorrt"),
        compute_capability=profile.hardware.accelerator.compute_capability,
    )


def test_importing_edgetrt_needs_neither_tensorrt_nor_numpy():
    code = "import sys, edgetrt; print(sorted(m for m in ('numpy', 'tensorrt', 'cuda', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plans_follow_the_profile():
    nano = _plan("jetson-nano", "fp16")
    assert nano.builder_flags == ["FP16"] and nano.workspace_mb == 1024 and nano.dla_core is None
    assert nano.tensorrt_versions == ">=8.2,<9" and nano.compute_capability == "5.3"
    orin = _plan()
    assert orin.builder_flags == ["FP16", "INT8"] and orin.workspace_mb == 2048 and orin.explicit_quantization
    nx = _plan("jetson-orin-nx", "int8", use_dla=True, dla_core=1)
    assert nx.dla_core == 1 and "GPU_FALLBACK" in nx.builder_flags
    assert "--useDLACore=1" in nx.trtexec and "--allowGPUFallback" in nx.trtexec
    strict = _plan("jetson-orin-nx", "int8", use_dla=True, allow_gpu_fallback=False)
    assert "GPU_FALLBACK" not in strict.builder_flags and "--allowGPUFallback" not in strict.trtexec


def test_trtexec_lines_use_the_flags_of_the_profiles_tensorrt():
    plan = _plan()
    assert trtexec_command(plan, "10.3") == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 --int8 --memPoolSize=workspace:2048M "
        "--builderOptimizationLevel=3 --timingCacheFile=timing.cache"
    )
    old = trtexec_command(plan, "8.2")
    assert "--workspace=2048" in old and "memPoolSize" not in old and "builderOptimizationLevel" not in old
    dynamic = plan.model_copy(update={"input_shapes": {"images": [-1, 3, 96, 96]}})
    assert trtexec_command(dynamic, "10.3").endswith("--shapes=images:-1x3x96x96")


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("10.3.0.30", ">=10.3,<11", True),
        ("10.7.0", ">=10.3,<11", True),
        ("10.2.0", ">=10.3,<11", False),
        ("11.0.1", ">=10.3,<11", False),
        ("8.2.1.8", ">=8.2,<9", True),
        ("8.6.2", ">=8.2,<9", True),
        ("10.3.0", ">=8.2,<9", False),
    ],
)
def test_version_ranges(version, spec, ok):
    assert version_in_range(version, spec) is ok


def test_version_range_spans_the_profiles_major():
    assert version_range("10.3") == ">=10.3,<11" and version_range("8.2") == ">=8.2,<9"


def test_the_plan_hash_covers_what_changes_an_engine_and_nothing_else():
    plan = _plan()
    base = plan_hash(plan, "a" * 64)
    assert plan_hash(plan, "b" * 64) != base, "another ONNX model"
    for change in (
        {"workspace_mb": 4096},
        {"builder_flags": ["FP16"]},
        {"input_shapes": {"images": [1, 3, 64, 64]}},
    ):
        assert plan_hash(plan.model_copy(update=change), "a" * 64) != base, change
    for same in ({"trtexec": "trtexec --other"}, {"tensorrt_versions": ">=10.0"}):
        assert plan_hash(plan.model_copy(update=same), "a" * 64) == base, same


def test_the_engine_key_names_tensorrt_gpu_capability_and_plan():
    plan = _plan()
    key = engine_key("10.3.0", "Orin", "8.7", plan, "a" * 64)
    assert key.digest == engine_key("10.3.0", "Orin", "8.7", plan, "a" * 64).digest
    others = [
        engine_key("10.3.1", "Orin", "8.7", plan, "a" * 64),
        engine_key("10.3.0", "NVIDIA GeForce RTX 4090", "8.7", plan, "a" * 64),
        engine_key("10.3.0", "Orin", "8.9", plan, "a" * 64),
        engine_key("10.3.0", "Orin", "8.7", plan, "c" * 64),
    ]
    assert len({key.digest, *(k.digest for k in others)}) == 5


def test_engine_cache_round_trip_and_refusals(tmp_path):
    plan = _plan()
    cache = EngineCache(tmp_path / "engines")
    key = engine_key("10.3.0", "Orin", "8.7", plan, "a" * 64)
    assert cache.load(key) is None
    cache.store(key, b"engine-bytes", builder="tensorrt", timing_cache=b"timing")
    assert cache.load(key) == b"engine-bytes"
    assert cache.timing_cache_path(key).read_bytes() == b"timing"
    meta_path = cache.entry(key) / "engine.json"
    meta = json.loads(meta_path.read_text())
    assert (
        meta["gpu_name"] == "Orin" and meta["tensorrt_version"] == "10.3.0" and meta["builder"] == "tensorrt"
    )

    # an entry copied under another key's name (another GPU) is refused, not loaded
    laptop = engine_key("10.3.0", "NVIDIA GeForce RTX 3060 Laptop GPU", "8.6", plan, "a" * 64)
    cache.entry(laptop).mkdir()
    for name in ("engine.plan", "engine.json"):
        (cache.entry(laptop) / name).write_bytes((cache.entry(key) / name).read_bytes())
    with pytest.raises(EngineMismatch, match=r"built for another device or plan.*gpu_name"):
        cache.load(laptop)

    (cache.entry(key) / "engine.plan").write_bytes(b"tampered")
    with pytest.raises(EngineMismatch, match="sha256"):
        cache.load(key)
    cache.store(key, b"rebuilt", builder="trtexec")  # a broken entry is replaced, atomically
    assert cache.load(key) == b"rebuilt"
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]


def test_engine_for_refuses_a_tensorrt_outside_the_plans_range(tmp_path):
    from edgetrt.build import EngineBuildError, engine_for
    from edgetrt.device import DeviceInfo

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not needed: refused before reading")
    with pytest.raises(EngineBuildError, match=r"outside this bundle.s range >=10\.3,<11"):
        engine_for(onnx, _plan(), EngineCache(tmp_path / "c"), DeviceInfo("8.6.2", "Orin", "8.7"))
