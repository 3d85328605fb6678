"""The ground floor: names, errors, durable writes. Each is said once; these pin down what all callers share."""

from __future__ import annotations

import os
import stat

import pytest

from edgebase import durable, ids
from edgebase.errors import HintedError, MissingDependencyError, collapse_whitespace, escape_newlines


@pytest.mark.parametrize("value", ["resnet", "Yolo11n.v2", "a" * 128, "m_1-x"])
def test_names_accepted(value):
    assert ids.is_name(value)


@pytest.mark.parametrize("value", ["", "-lead", ".hidden", "a" * 129, "sp ace", "a/b", "name\n", 7, None])
def test_names_refused(value):
    assert not ids.is_name(value)


@pytest.mark.parametrize("value", ["rpi5", "jetson-orin-nano", "d" * 63])
def test_slugs_accepted(value):
    assert ids.is_slug(value)


@pytest.mark.parametrize("value", ["Rpi5", "rpi_5", "rpi.5", "-x", "d" * 64, "dev\n", ""])
def test_slugs_refused(value):
    """A trailing newline is refused everywhere: `$` with re.match would have let it through."""
    assert not ids.is_slug(value)


def test_the_contracts_use_the_same_shapes():
    from edgewire.topics import ID_PATTERN
    from registry_api.schemas import GROUP_RE

    assert ID_PATTERN == GROUP_RE == ids.SLUG_PATTERN


def test_manifest_and_profiles_refuse_a_trailing_newline():
    from pydantic import ValidationError

    from targets.schema import TargetProfile

    with pytest.raises(ValidationError, match="lowercase"):
        TargetProfile.model_validate({"name": "cpu\n"})


def test_hinted_error_families():
    class Plain(HintedError):
        pass

    class Escaped(HintedError):
        hint_in_str = True
        flatten = staticmethod(escape_newlines)

    class Collapsed(HintedError):
        flatten = staticmethod(collapse_whitespace)

    assert str(Plain("a\nb", "do x")) == "a\nb" and Plain("m").hint is None
    assert str(Escaped("bad\nname", "rename it")) == "bad\\nname; rename it"
    assert Collapsed("a \n  b", "c\td").message == "a b" and Collapsed("x", "c\td").hint == "c d"
    missing = MissingDependencyError("onnxruntime", "build", "running ONNX models")
    assert missing.exit_code == 2 and "edgectl[build]" in missing.hint


def test_every_family_is_a_hinted_error():
    from device_agent.errors import AgentError
    from edgebundle.errors import BundleError
    from mobile_export.common import UserInputError as ExportInputError
    from registry_api.client import RegistryError
    from toolchain.errors import EdgectlError

    for family in (AgentError, BundleError, ExportInputError, RegistryError, EdgectlError):
        assert issubclass(family, HintedError)
    assert str(BundleError("x", "y")) == "x; y" and str(EdgectlError("x", "y")) == "x"
    assert RegistryError("gone", status=503).status == 503


def test_atomic_write_mode_and_content(tmp_path):
    target = tmp_path / "secret.json"
    old = os.umask(0o000)
    try:
        durable.atomic_write_json(target, {"k": 1}, mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == '{\n "k": 1\n}\n'
    durable.atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temporary left


def test_write_new_never_replaces_nor_follows(tmp_path):
    kept = tmp_path / "kept"
    kept.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        durable.write_new(kept, b"new")
    assert kept.read_bytes() == b"old"  # a refused write leaves the file that was there
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        durable.write_new(link, b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        durable.atomic_write(tmp_path / "state.json", b"data")
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_removes_a_link_not_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "ln").symlink_to(tmp_path / "real")
    durable.remove_tree(tmp_path / "ln")
    assert (tmp_path / "real" / "f").exists() and not (tmp_path / "ln").exists()
    durable.remove_tree(tmp_path / "real")
    durable.remove_tree(tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []
