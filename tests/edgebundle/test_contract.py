"""The bundle contract on its own: signing, verification, archives, atomic publishing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgebundle import (
    ArchiveError,
    BundleError,
    IntegrityError,
    KeyFileError,
    Manifest,
    SignatureError,
    extract_archive,
    generate_keypair,
    load_private_key,
    load_public_key,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from edgebundle import bundle as bundle_module


def _manifest(**changes) -> Manifest:
    tensor = {"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"}
    data = {
        "name": "tiny",
        "version": 3,
        "created_at": "2026-11-22T00:00:00+00:00",
        "target": "cpu",
        "runtime": "onnxruntime",
        "precision": "int8",
        "artifacts": [
            {
                "path": "model.onnx",
                "format": "onnx",
                "precision": "int8",
                "inputs": [tensor],
                "outputs": [{**tensor, "name": "output"}],
            }
        ],
        "preprocessing": {},
        "postprocessing": {"task": "classify", "labels": ["a", "b"]},
        "source": {"kind": "onnx", "filename": "tiny.onnx", "sha256": "0" * 64},
        "toolchain": {"edgectl": "0.1.0", "converter": "test"},
    }
    data.update(changes)
    return Manifest.model_validate(data)


@pytest.fixture
def keypair(tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    return load_private_key(private), load_public_key(public)


def _stage(tmp_path: Path, name: str = "stage") -> Path:
    stage = tmp_path / name
    (stage / "extra").mkdir(parents=True)
    (stage / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (stage / "labels.txt").write_text("a\nb\n")
    (stage / "extra" / "notes.txt").write_text("nested files are hashed too\n")
    return stage


@pytest.fixture
def published(tmp_path, keypair):
    out = tmp_path / "out"
    out.mkdir()
    return write_bundle(_stage(tmp_path), _manifest(), keypair[0], out, "tiny-v3-cpu")


def test_round_trip(published, keypair):
    for location in (published.directory, published.archive):
        manifest = verify_bundle(location, keypair[1])
        assert manifest.version == 3
        assert {f.path for f in manifest.files} == {"model.onnx", "labels.txt", "extra/notes.txt"}
        assert manifest.key_id == published.manifest.key_id
    assert read_manifest(published.archive) == published.manifest


def test_every_byte_of_every_file_is_covered(published, keypair):
    for path in sorted(p for p in published.directory.rglob("*") if p.is_file()):
        original = path.read_bytes()
        for offset in {0, len(original) // 2, len(original) - 1}:
            data = bytearray(original)
            data[offset] ^= 0x80
            path.write_bytes(bytes(data))
            with pytest.raises(BundleError):
                verify_bundle(published.directory, keypair[1])
        path.write_bytes(original)
    verify_bundle(published.directory, keypair[1])


def test_extra_and_missing_files_fail(published, keypair):
    (published.directory / "intruder.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"intruder\.bin"):
        verify_bundle(published.directory, keypair[1])
    (published.directory / "intruder.bin").unlink()
    (published.directory / "labels.txt").unlink()
    with pytest.raises(IntegrityError, match=r"labels\.txt"):
        verify_bundle(published.directory, keypair[1])


def test_a_re_signed_pretty_manifest_is_rejected(published, keypair):
    path = published.directory / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=2))
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_bundle(published.directory, keypair[1])


def test_other_key_fails(published, tmp_path):
    _, other = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError):
        verify_bundle(published.directory, load_public_key(other))


def test_archive_is_reproducible(tmp_path, keypair):
    first = write_bundle(_stage(tmp_path, "a"), _manifest(), keypair[0], tmp_path, "one")
    second = write_bundle(_stage(tmp_path, "b"), _manifest(), keypair[0], tmp_path, "two-placeholder")
    # same content under another top-level name differs only by that name; same name gives same bytes
    third_dir = tmp_path / "again"
    third_dir.mkdir()
    third = write_bundle(_stage(tmp_path, "c"), _manifest(), keypair[0], third_dir, "one")
    assert first.archive.read_bytes() == third.archive.read_bytes()
    assert second.archive.read_bytes() != first.archive.read_bytes()


def _evil_tar(path: Path, member: tarfile.TarInfo, payload: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo("b")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        tar.addfile(member, io.BytesIO(payload) if payload else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "two-tops"])
def test_unsafe_archives_are_refused(tmp_path, kind):
    archive = tmp_path / "evil.edgebundle"
    if kind == "dotdot":
        member = tarfile.TarInfo("b/../../escaped.txt")
    elif kind == "absolute":
        member = tarfile.TarInfo("/tmp/escaped.txt")
    elif kind == "two-tops":
        member = tarfile.TarInfo("other/file.txt")
    else:
        member = tarfile.TarInfo("b/link")
        member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        member.linkname = "/etc/passwd"
    member.size = 4 if member.type == tarfile.REGTYPE else 0
    _evil_tar(archive, member, b"evil" if member.size else b"")
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError):
        extract_archive(archive, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert not dest.exists()


def test_size_limit(published, tmp_path):
    with pytest.raises(ArchiveError, match="more than"):
        extract_archive(published.archive, tmp_path / "d", max_bytes=1000)


def test_corrupt_archive(tmp_path):
    junk = tmp_path / "junk.edgebundle"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArchiveError):
        read_manifest(junk)


def test_failed_publish_keeps_the_old_bundle_and_leaves_no_temp(published, tmp_path, keypair, monkeypatch):
    out = published.directory.parent
    before = sorted(p.name for p in out.iterdir())

    def explode(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "write_archive", explode)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(_stage(tmp_path, "again"), _manifest(version=4), keypair[0], out, "tiny-v3-cpu")
    assert sorted(p.name for p in out.iterdir()) == before
    assert verify_bundle(published.directory, keypair[1]).version == 3


def test_key_files(tmp_path):
    with pytest.raises(KeyFileError, match=r"nope\.key"):
        load_private_key(tmp_path / "nope.key")
    _private, public = generate_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path)
    with pytest.raises(KeyFileError):
        load_private_key(public)  # a public key where a private one belongs
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "ec.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_private_key(other)


def test_manifest_rejects_unknown_fields_and_bad_paths():
    with pytest.raises(ValueError):
        _manifest(surprise=True)
    with pytest.raises(ValueError):
        _manifest(files=[{"path": "../escape", "sha256": "0" * 64, "size": 1}])
    with pytest.raises(ValueError):
        _manifest(version=0)


def test_bundle_package_is_light():
    code = "import edgebundle, sys; assert not {'numpy', 'torch', 'onnx'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
