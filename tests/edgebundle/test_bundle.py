"""Writing, reading, verifying and extracting bundles; tampering, unsafe archives, determinism, atomicity."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

import edgebundle.archive as archive_mod
import edgebundle.bundle as bundle_mod
from edgebundle import (
    ArchiveError,
    BundleError,
    IntegrityError,
    ManifestError,
    SignatureError,
    bundle_name_for,
    canonical_manifest_bytes,
    extract_archive,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    open_verified,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from tests.edgebundle.test_signing import make_manifest

ARTIFACT = bytes(range(256)) * 40 + b"tail"  # 10 KiB and a bit
NAME = "digits-v3-cpu"


@pytest.fixture
def keypair(tmp_path: Path):
    private_path, public_path = generate_keypair(tmp_path / "keys")
    return load_private_key(private_path), load_public_key(public_path)


def stage(root: Path, artifact: bytes = ARTIFACT) -> Path:
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(artifact)
    (root / "labels.txt").write_text("zéro\n一\ntwo\n3\n", encoding="utf-8")
    (root / "extra").mkdir()
    (root / "extra" / "notes.bin").write_bytes(b"\x00\x01notes")
    return root


@pytest.fixture
def built(tmp_path: Path, keypair):
    private, _ = keypair
    return write_bundle(stage(tmp_path / "staging"), make_manifest(), private, tmp_path / "out", NAME)


def _flip(path: Path, position: int, mask: int = 0x01) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[position] ^= mask
    path.write_bytes(bytes(data))
    return original


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): (sha256_file(p) if p.is_file() else "dir")
        for p in folder.rglob("*")
    }


# --------------------------------------------------------------------------- writing


def test_bundle_name_for() -> None:
    assert bundle_name_for("digits", 3, "cpu") == "digits-v3-cpu"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    assert sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_write_bundle_publishes_folder_and_archive(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    out = tmp_path / "out"
    assert built.directory == out / NAME
    assert built.archive == out / f"{NAME}.edgebundle"
    assert sorted(p.name for p in out.iterdir()) == [NAME, f"{NAME}.edgebundle"]
    assert not (tmp_path / "staging").exists()  # consumed
    assert [f.path for f in built.manifest.files] == ["extra/notes.bin", "labels.txt", "model.onnx"]
    entry = next(f for f in built.manifest.files if f.path == "model.onnx")
    assert (entry.size, entry.sha256) == (len(ARTIFACT), hashlib.sha256(ARTIFACT).hexdigest())
    assert built.manifest.key_id == key_id(public)
    assert sorted(p.name for p in built.directory.iterdir()) == [
        "extra",
        "labels.txt",
        "manifest.json",
        "manifest.sig",
        "model.onnx",
    ]
    assert verify_bundle(built.directory, public) == built.manifest
    assert verify_bundle(built.archive, public) == built.manifest
    assert read_manifest(built.directory) == built.manifest
    assert read_manifest(built.archive) == built.manifest


def test_manifest_file_is_canonical_bytes(built) -> None:
    assert (built.directory / "manifest.json").read_bytes() == canonical_manifest_bytes(built.manifest)


def test_archive_layout_and_metadata(built) -> None:
    with tarfile.open(built.archive, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        NAME,
        f"{NAME}/extra",
        f"{NAME}/extra/notes.bin",
        f"{NAME}/labels.txt",
        f"{NAME}/manifest.json",
        f"{NAME}/manifest.sig",
        f"{NAME}/model.onnx",
    ]
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.mode == (0o755 if member.isdir() else 0o644)
    header = built.archive.read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == b"\x00\x00\x00\x00"  # no file name in the gzip header, mtime 0


def test_archive_is_deterministic(tmp_path: Path, keypair) -> None:
    private, _ = keypair
    digests = []
    for run in range(2):
        staging = stage(tmp_path / f"staging{run}")
        os.utime(staging / "model.onnx", (1_000_000 * (run + 1), 1_000_000 * (run + 1)))
        (staging / "labels.txt").chmod(0o600 if run else 0o664)
        location = write_bundle(staging, make_manifest(), private, tmp_path / f"out{run}", NAME)
        digests.append(sha256_file(location.archive))
    assert digests[0] == digests[1]


def test_staging_must_not_hold_manifest_files(tmp_path: Path, keypair) -> None:
    private, _ = keypair
    staging = stage(tmp_path / "staging")
    (staging / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match=r"manifest\.json"):
        write_bundle(staging, make_manifest(), private, tmp_path / "out", NAME)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_staging_symlink_is_refused(tmp_path: Path, keypair) -> None:
    private, _ = keypair
    staging = stage(tmp_path / "staging")
    (staging / "link").symlink_to(staging / "labels.txt")
    with pytest.raises(IntegrityError, match="symbolic link"):
        write_bundle(staging, make_manifest(), private, tmp_path / "out", NAME)


def test_artifact_missing_from_staging_is_a_manifest_error(tmp_path: Path, keypair) -> None:
    private, _ = keypair
    staging = stage(tmp_path / "staging")
    (staging / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model\.onnx"):
        write_bundle(staging, make_manifest(), private, tmp_path / "out", NAME)
    assert sorted(p.name for p in staging.iterdir()) == ["extra", "labels.txt"]  # nothing added


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x y"])
def test_invalid_bundle_name(tmp_path: Path, keypair, bad: str) -> None:
    private, _ = keypair
    with pytest.raises(BundleError, match="bundle name"):
        write_bundle(stage(tmp_path / "staging"), make_manifest(), private, tmp_path / "out", bad)


def test_rewrite_replaces_the_old_bundle(built, tmp_path: Path, keypair) -> None:
    private, public = keypair
    staging = stage(tmp_path / "staging2", artifact=b"new model")
    new = write_bundle(staging, make_manifest(version=4), private, tmp_path / "out", NAME)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [NAME, f"{NAME}.edgebundle"]
    assert (new.directory / "model.onnx").read_bytes() == b"new model"
    assert verify_bundle(new.archive, public).version == 4
    assert verify_bundle(new.directory, public).version == 4


# --------------------------------------------------------------------------- atomicity


def test_failed_archive_write_leaves_nothing(tmp_path: Path, keypair, monkeypatch) -> None:
    private, _ = keypair
    out = tmp_path / "out"
    out.mkdir()
    staging = stage(tmp_path / "staging")
    before = _snapshot(staging)

    def broken(source, files, top, dest):
        Path(dest).write_bytes(b"half an archive")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bundle_mod, "write_archive", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_bundle(staging, make_manifest(), private, out, NAME)
    assert list(out.iterdir()) == []
    assert _snapshot(staging) == before  # the caller's staging is as it was: it can retry


def test_failed_rewrite_keeps_the_old_bundle(built, tmp_path: Path, keypair, monkeypatch) -> None:
    private, public = keypair
    out = tmp_path / "out"
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod, "write_archive", broken)
    with pytest.raises(OSError, match="No space"):
        write_bundle(stage(tmp_path / "staging2", b"new"), make_manifest(version=4), private, out, NAME)
    assert _snapshot(out) == before
    assert verify_bundle(built.directory, public).version == 3
    assert verify_bundle(built.archive, public).version == 3


def test_failure_at_the_last_step_rolls_the_folder_back(built, tmp_path: Path, keypair, monkeypatch) -> None:
    """The new folder is already in place when the archive rename fails: the old folder must come back."""
    private, public = keypair
    out = tmp_path / "out"
    before = _snapshot(out)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == out / f"{NAME}.edgebundle":
            raise OSError(5, "I/O error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(bundle_mod.os, "replace", replace)
    with pytest.raises(OSError, match="I/O error"):
        write_bundle(stage(tmp_path / "staging2", b"new"), make_manifest(version=4), private, out, NAME)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert verify_bundle(built.directory, public).version == 3


def test_failure_after_move_leaves_no_temp_folder(tmp_path: Path, keypair, monkeypatch) -> None:
    private, _ = keypair
    out = tmp_path / "out"
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out / NAME:
            raise OSError(5, "I/O error")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(bundle_mod.os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        write_bundle(stage(tmp_path / "staging"), make_manifest(), private, out, NAME)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- tampering


def _positions(size: int) -> list[int]:
    return sorted({0, 1, size // 3, size // 2, size - 2, size - 1})


def test_flipping_any_byte_of_any_file_fails_verification(built, keypair) -> None:
    _, public = keypair
    files = sorted(p for p in built.directory.rglob("*") if p.is_file())
    assert {p.name for p in files} == {
        "model.onnx",
        "labels.txt",
        "notes.bin",
        "manifest.json",
        "manifest.sig",
    }
    checked = 0
    for path in files:
        size = path.stat().st_size
        # Every byte of the small files; the first, last and a few middle bytes of the artifact.
        positions = _positions(size) if path.name == "model.onnx" else range(size)
        masks = (0x01, 0x80, 0xFF) if path.name == "model.onnx" else (0x01,)
        for position in positions:
            for mask in masks:
                original = _flip(path, position, mask)
                try:
                    with pytest.raises((SignatureError, IntegrityError, ManifestError)):
                        verify_bundle(built.directory, public)
                finally:
                    path.write_bytes(original)
                checked += 1
    assert checked > 500
    verify_bundle(built.directory, public)  # untouched again


def test_flipping_bytes_of_the_archive_fails(built, keypair) -> None:
    _, public = keypair
    size = built.archive.stat().st_size
    # Bytes 3..9 of the gzip header are flags, mtime, XFL and OS: metadata outside the content (flipping the
    # FTEXT flag or the mtime still decompresses to the same, valid bundle), so they are left out.
    positions = [
        0,
        1,
        2,
        10,
        11,
        50,
        size // 3,
        size // 2,
        size - 100,
        size - 9,
        size - 8,
        size - 5,
        size - 1,
    ]
    for position in positions:
        original = _flip(built.archive, position)
        try:
            with pytest.raises(BundleError):
                verify_bundle(built.archive, public)
        finally:
            built.archive.write_bytes(original)
    verify_bundle(built.archive, public)


def test_truncated_or_extended_archive_fails(built, keypair) -> None:
    _, public = keypair
    data = built.archive.read_bytes()
    for mangled in (data[:-1], data[: len(data) // 2], data + b"junk", b""):
        built.archive.write_bytes(mangled)
        with pytest.raises(ArchiveError):
            verify_bundle(built.archive, public)


def test_extra_file_fails(built, keypair) -> None:
    _, public = keypair
    (built.directory / "extra" / "sneaky.py").write_text("print('hi')")
    with pytest.raises(IntegrityError, match=r"extra/sneaky\.py"):
        verify_bundle(built.directory, public)


def test_extra_symlink_fails(built, keypair) -> None:
    _, public = keypair
    (built.directory / "link").symlink_to(built.directory / "model.onnx")
    with pytest.raises(IntegrityError, match="symbolic link"):
        verify_bundle(built.directory, public)


def test_artifact_replaced_by_symlink_fails(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    copy = tmp_path / "copy.onnx"
    copy.write_bytes((built.directory / "model.onnx").read_bytes())
    (built.directory / "model.onnx").unlink()
    (built.directory / "model.onnx").symlink_to(copy)
    with pytest.raises(IntegrityError, match="symbolic link"):
        verify_bundle(built.directory, public)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("model.onnx", IntegrityError),
        ("extra/notes.bin", IntegrityError),
        ("manifest.json", ManifestError),
        ("manifest.sig", SignatureError),
    ],
)
def test_deleted_file_fails(built, keypair, name: str, error: type) -> None:
    _, public = keypair
    (built.directory / name).unlink()
    with pytest.raises(error, match=name.split("/")[-1].replace(".", r"\.")):
        verify_bundle(built.directory, public)


def test_wrong_key_fails(built, tmp_path: Path) -> None:
    other = load_public_key(generate_keypair(tmp_path / "other")[1])
    with pytest.raises(SignatureError):
        verify_bundle(built.directory, other)
    with pytest.raises(SignatureError):
        verify_bundle(built.archive, other)


def test_missing_bundle(tmp_path: Path, keypair) -> None:
    _, public = keypair
    with pytest.raises(ManifestError, match="does not exist"):
        verify_bundle(tmp_path / "nothing", public)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(ManifestError, match="has no manifest"):
        read_manifest(tmp_path)


def test_read_manifest_does_not_check_the_signature(built) -> None:
    (built.directory / "manifest.sig").write_text("whatever\n")
    assert read_manifest(built.directory).name == "digits"


def test_read_manifest_of_garbage(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text('{"name": "x"}')
    with pytest.raises(ManifestError, match="schema"):
        read_manifest(tmp_path / "b")
    (tmp_path / "x.edgebundle").write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError):
        read_manifest(tmp_path / "x.edgebundle")


# --------------------------------------------------------------------------- archive safety


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch) -> Path:
    """Temporary folders go under tmp_path/tmp, so a test can see that nothing was left or escaped."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


UNSAFE = {
    "dotdot": [_file("../evil")],
    "dotdot-inside": [_file("b/model.onnx"), _file("b/../evil")],
    "dotdot-deep": [_file("b/../../evil")],
    "absolute": [_file("ABSOLUTE")],  # replaced by an absolute path under tmp_path in the test
    "dot": [_file("b/./x")],
    "backslash": [_file("b\\..\\evil")],
    "symlink-absolute": [_special("b/link", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-then-write": [_special("b/link", tarfile.SYMTYPE, "../../evil"), _file("b/link", b"through")],
    "hardlink": [_file("b/model.onnx"), _special("b/hard", tarfile.LNKTYPE, "b/model.onnx")],
    "chardev": [_special("b/dev", tarfile.CHRTYPE)],
    "blockdev": [_special("b/blk", tarfile.BLKTYPE)],
    "fifo": [_special("b/fifo", tarfile.FIFOTYPE)],
    "two-tops": [_file("b/x"), _file("c/y")],
    "file-at-top": [_file("toplevel-file")],
    "duplicate": [_file("b/x"), _file("b/x")],
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_archive_is_refused(tmp_path: Path, sandbox: Path, keypair, kind: str) -> None:
    _, public = keypair
    evil_abs = tmp_path / "evil-absolute"
    members = [
        (tarfile.TarInfo(str(evil_abs)), data) if info.name == "ABSOLUTE" else (info, data)
        for info, data in UNSAFE[kind]
    ]
    archive = tmp_path / "bad.edgebundle"
    archive.write_bytes(_tar_gz(members))
    if kind == "absolute":
        with tarfile.open(archive) as tar:
            assert tar.getnames() == [str(evil_abs)]
    with pytest.raises(ArchiveError):
        verify_bundle(archive, public)
    with pytest.raises(ArchiveError):
        open_verified(archive, public, tmp_path / "dest")
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "dest")
    with pytest.raises(ArchiveError):
        read_manifest(archive)
    assert not (tmp_path / "dest").exists()
    assert list(sandbox.iterdir()) == []  # the temporary folders are gone
    assert not evil_abs.exists()
    # what the attacks would write, looked for among all of this session's temporary folders (other
    # tests' own files may be named evil-something: only these exact names would be an escape)
    assert [p for name in ("evil", "evil-absolute") for p in tmp_path.parent.rglob(name)] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.edgebundle", "keys", "tmp"]


def test_too_many_members(tmp_path: Path, keypair, monkeypatch) -> None:
    _, public = keypair
    monkeypatch.setattr(archive_mod, "MAX_MEMBERS", 5)
    archive = tmp_path / "many.edgebundle"
    archive.write_bytes(_tar_gz([_file(f"b/f{i}") for i in range(6)]))
    with pytest.raises(ArchiveError, match="more than 5 members"):
        verify_bundle(archive, public)


def test_ten_thousand_and_one_members(tmp_path: Path, keypair) -> None:
    _, public = keypair
    archive = tmp_path / "many.edgebundle"
    archive.write_bytes(_tar_gz([_file(f"b/f{i}", b"") for i in range(10_001)]))
    with pytest.raises(ArchiveError, match="more than 10000 members"):
        verify_bundle(archive, public)


def test_size_limit(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        verify_bundle(built.archive, public, max_bytes=1000)
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        open_verified(built.archive, public, tmp_path / "dest", max_bytes=1000)
    assert not (tmp_path / "dest").exists()


def test_gzip_bomb_of_padding_is_refused(tmp_path: Path, keypair) -> None:
    """Zeros after the end of the tar are read to check the gzip trailer, but not without limit."""
    _, public = keypair
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("b/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "bomb.edgebundle"
    with gzip.open(archive, "wb") as gz:
        gz.write(tar_bytes.getvalue())
        for _ in range(8):
            gz.write(bytes(1 << 20))
    with pytest.raises(ArchiveError, match="after the end"):
        verify_bundle(archive, public)


def test_trailing_data_after_the_tar_is_refused(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    with gzip.open(built.archive, "rb") as gz:
        content = gz.read()
    archive = tmp_path / "trailing.edgebundle"
    with gzip.open(archive, "wb") as gz:
        gz.write(content + b"hidden payload")
    with pytest.raises(ArchiveError, match="after the end"):
        verify_bundle(archive, public)


# --------------------------------------------------------------------------- open_verified / extract_archive


def test_open_verified_archive(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    dest = tmp_path / "device" / "current"
    manifest = open_verified(built.archive, public, dest)
    assert manifest == built.manifest
    assert (dest / "model.onnx").read_bytes() == ARTIFACT
    assert sorted(p.name for p in dest.parent.iterdir()) == ["current"]  # no temporary sibling left


def test_open_verified_folder(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    dest = tmp_path / "copy"
    dest.mkdir()  # an empty folder is fine
    assert open_verified(built.directory, public, dest) == built.manifest
    assert (dest / "extra" / "notes.bin").read_bytes() == b"\x00\x01notes"
    verify_bundle(dest, public)


def test_open_verified_refuses_tampered_bundle_and_leaves_dest_alone(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    _flip(built.directory / "model.onnx", 7)
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        open_verified(built.directory, public, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "out"]


def test_open_verified_refuses_a_busy_destination(built, keypair, tmp_path: Path) -> None:
    _, public = keypair
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not an empty folder"):
        open_verified(built.archive, public, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_extract_archive(built, tmp_path: Path) -> None:
    dest = extract_archive(built.archive, tmp_path / "x")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "extra/notes.bin",
        "labels.txt",
        "manifest.json",
        "manifest.sig",
        "model.onnx",
    ]
