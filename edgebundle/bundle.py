"""Write, read and verify bundles: a folder plus one reproducible `.edgebundle` archive (tar.gz).

Publishing is atomic: the folder and archive appear under their final names
only when complete, and a failed write leaves the previous bundle intact and
no temporary files behind. Extraction refuses anything that could escape its
destination (absolute paths, '..', links, devices) or exhaust the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgebundle.errors import ArchiveError, IntegrityError, ManifestError
from edgebundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from edgebundle.signing import canonical_manifest_bytes, key_id, sign_manifest, verify_manifest_signature

ARCHIVE_SUFFIX = ".edgebundle"
MAX_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 4 * 2**30
MAX_MANIFEST_BYTES = 16 * 2**20
RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}


@dataclass(frozen=True)
class BundleLocation:
    directory: Path
    archive: Path
    manifest: Manifest


def bundle_name_for(name: str, version: int, target: str) -> str:
    return f"{name}-v{version}-{target}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> list[str]:
    paths = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise IntegrityError(
                f"{path.relative_to(root)} is a symbolic link; bundles hold plain files only"
            )
        if path.is_file():
            paths.append(path.relative_to(root).as_posix())
    return paths


def parse_manifest(data: bytes) -> Manifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest.json is larger than 16 MiB; not a bundle manifest")
    try:
        return Manifest.model_validate(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest.json is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"manifest.json is invalid at {where}: {first['msg']}") from exc


def _write_archive(directory: Path, archive: Path, top: str) -> None:
    """Deterministic tar.gz: sorted members, zeroed times and owners, fixed modes."""
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo(top)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(folder)
        dirs_done: set[str] = set()
        for rel in _walk(directory):
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                sub = "/".join(parts[:depth])
                if sub not in dirs_done:
                    info = tarfile.TarInfo(f"{top}/{sub}")
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                    dirs_done.add(sub)
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mode, info.mtime = (directory / rel).stat().st_size, 0o644, 0
            with (directory / rel).open("rb") as fh:
                tar.addfile(info, fh)


def write_bundle(
    staging: Path, manifest: Manifest, private_key: Ed25519PrivateKey, out_dir: Path, bundle_name: str
) -> BundleLocation:
    """Hash the staged files, sign, and publish folder + archive atomically under `out_dir`."""
    staging, out_dir = Path(staging), Path(out_dir)
    entries = []
    for rel in _walk(staging):
        if rel in RESERVED:
            raise IntegrityError(f"staging folder already holds {rel}; it is written by the signer")
        entries.append(
            FileEntry(path=rel, sha256=sha256_file(staging / rel), size=(staging / rel).stat().st_size)
        )
    signed = Manifest.model_validate(
        {
            **manifest.model_dump(),
            "files": [e.model_dump() for e in entries],
            "key_id": key_id(private_key.public_key()),
        }
    )
    final_dir, final_archive = out_dir / bundle_name, out_dir / f"{bundle_name}{ARCHIVE_SUFFIX}"
    temp_archive = temp_dir = old_dir = None
    try:
        (staging / MANIFEST_NAME).write_bytes(canonical_manifest_bytes(signed))
        (staging / SIGNATURE_NAME).write_bytes(sign_manifest(signed, private_key))
        fd, name = tempfile.mkstemp(prefix=f".{bundle_name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        temp_archive = Path(name)
        _write_archive(staging, temp_archive, bundle_name)
        temp_dir = Path(tempfile.mkdtemp(prefix=f".{bundle_name}.", dir=out_dir))
        temp_dir.rmdir()
        shutil.move(str(staging), temp_dir)
        if final_dir.exists():
            old_dir = final_dir.with_name(f".{bundle_name}.old-{os.getpid()}")
            final_dir.rename(old_dir)
        temp_dir.rename(final_dir)
        temp_dir = None
        os.replace(temp_archive, final_archive)
        temp_archive = None
    except BaseException:
        if old_dir is not None and old_dir.exists() and not final_dir.exists():
            old_dir.rename(final_dir)
            old_dir = None
        for leftover in (temp_archive, temp_dir):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        raise
    finally:
        if old_dir is not None and old_dir.exists():
            shutil.rmtree(old_dir, ignore_errors=True)
    return BundleLocation(final_dir, final_archive, signed)


def extract_archive(archive: Path, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Safely extract a bundle archive's files into `dest` (created, must not exist or be empty)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArchiveError(f"extraction folder {dest} is not empty")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = []
            total = 0
            top = None
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"{archive.name} has more than {MAX_MEMBERS} members")
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
                    raise ArchiveError(f"{archive.name} holds an unsafe path {name!r}")
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(
                        f"{archive.name} holds a link or device {name!r}; bundles hold plain files"
                    )
                top = top or parts[0]
                if parts[0] != top:
                    raise ArchiveError(f"{archive.name} has more than one top-level folder")
                total += member.size
                if total > max_bytes:
                    raise ArchiveError(f"{archive.name} unpacks to more than {max_bytes} bytes")
                if member.isfile() and len(parts) > 1:
                    members.append(member)
            for member in members:
                target = dest.joinpath(*member.name.split("/")[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{archive.name} is not a readable bundle archive: {exc}") from exc
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def read_manifest(bundle: Path) -> Manifest:
    """The manifest of a folder or archive, without checking the signature (for `inspect`)."""
    bundle = Path(bundle)
    if bundle.is_dir():
        path = bundle / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{bundle} has no {MANIFEST_NAME}; is it a bundle folder?")
        return parse_manifest(path.read_bytes())
    if not bundle.is_file():
        raise ManifestError(f"bundle {bundle} does not exist")
    with tempfile.TemporaryDirectory(prefix="edgebundle-") as tmp:
        return read_manifest(extract_archive(bundle, Path(tmp) / "b"))


def _verify_dir(directory: Path, public_key: Ed25519PublicKey) -> Manifest:
    manifest_path, signature_path = directory / MANIFEST_NAME, directory / SIGNATURE_NAME
    if not manifest_path.is_file() or not signature_path.is_file():
        raise IntegrityError(
            f"{directory} lacks {MANIFEST_NAME} or {SIGNATURE_NAME}; it is not a signed bundle"
        )
    manifest = verify_manifest_signature(manifest_path.read_bytes(), signature_path.read_bytes(), public_key)
    listed = {entry.path: entry for entry in manifest.files}
    present = set(_walk(directory)) - RESERVED
    extra = sorted(present - set(listed))
    if extra:
        raise IntegrityError(f"{extra[0]} is in the bundle but not in its manifest")
    for path, entry in listed.items():
        file = directory / path
        if not file.is_file():
            raise IntegrityError(f"{path} is listed in the manifest but missing")
        if file.stat().st_size != entry.size or sha256_file(file) != entry.sha256:
            raise IntegrityError(f"{path} does not match its sha256 in the manifest; the bundle was altered")
    return manifest


def verify_bundle(bundle: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Signature, canonical manifest, every file's size and hash, no unlisted file. Raises on any failure."""
    bundle = Path(bundle)
    if bundle.is_dir():
        return _verify_dir(bundle, public_key)
    if not bundle.is_file():
        raise ManifestError(f"bundle {bundle} does not exist")
    with tempfile.TemporaryDirectory(prefix="edgebundle-") as tmp:
        return _verify_dir(extract_archive(bundle, Path(tmp) / "b"), public_key)


def open_verified(bundle: Path, public_key: Ed25519PublicKey, dest: Path) -> Manifest:
    """Extract (if an archive) into `dest` and verify there; `dest` is removed again on failure."""
    bundle, dest = Path(bundle), Path(dest)
    if bundle.is_dir():
        shutil.copytree(bundle, dest)
    else:
        extract_archive(bundle, dest)
    try:
        return _verify_dir(dest, public_key)
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        raise
