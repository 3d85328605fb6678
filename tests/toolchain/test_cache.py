"""toolchain.cache: the one content-addressed cache behind the ONNX exports and the SavedModels."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.cache import cache_dir, cache_key, cached


@pytest.fixture(autouse=True)
def _cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECTL_CACHE_DIR", str(tmp_path / "cache"))


def test_keys_follow_the_payload_not_its_order():
    assert cache_key({"a": 1, "b": [2]}) == cache_key({"b": [2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and len(cache_key([])) == 32


def test_made_once_then_reused():
    calls = []

    def make(work: Path) -> Path:
        calls.append(work)
        (work / "m.onnx").write_bytes(b"model")
        return work / "m.onnx"

    first = cached("onnx", "k.onnx", make, complete=Path.is_file)
    again = cached("onnx", "k.onnx", make, complete=Path.is_file)
    assert first == (cache_dir("onnx") / "k.onnx", False) and again == (first[0], True)
    assert len(calls) == 1 and first[0].read_bytes() == b"model"
    assert [p.name for p in cache_dir("onnx").iterdir()] == ["k.onnx"]  # no work folder left


def test_a_failed_make_leaves_no_entry():
    def make(work: Path) -> Path:
        (work / "half").mkdir()
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError):
        cached("saved_model", "k", make, complete=lambda p: (p / "saved_model.pb").is_file())
    assert list(cache_dir("saved_model").iterdir()) == []


def test_an_incomplete_entry_is_rebuilt_and_a_racing_one_kept():
    complete = lambda p: (p / "saved_model.pb").is_file()  # noqa: E731
    entry = cache_dir("saved_model") / "k"
    entry.mkdir(parents=True)  # a folder without its saved_model.pb: never taken as a hit

    def racing(work: Path) -> Path:  # another build finishes first; ours cannot replace a full folder
        (entry / "saved_model.pb").write_bytes(b"theirs")
        (work / "out").mkdir()
        (work / "out" / "saved_model.pb").write_bytes(b"ours")
        return work / "out"

    path, hit = cached("saved_model", "k", racing, complete=complete)
    assert (path, hit) == (entry, False) and (entry / "saved_model.pb").read_bytes() == b"theirs"
