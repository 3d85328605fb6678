"""Write, read and verify bundles: a folder plus one reproducible `.edgebundle` archive (tar.gz).

A bundle folder holds the staged files (artifacts, labels, ...), `manifest.json`
(canonical bytes) and `manifest.sig`. The archive holds the same files under one
top-level folder named like the bundle; how it is written reproducibly and
extracted defensively is `edgebundle.archive`, and the file primitives both use
are `edgebundle.files`.

Publishing is atomic: the folder and the archive appear under their final
names only once complete; a failed write leaves the previous bundle of that
name intact and no temporary files behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgebase.durable import fsync_dir, write_new
from edgebase.ids import is_file_name
from edgebundle.archive import (
    MAX_ARCHIVE_BYTES,
    REBUILD,
    extract_into,
    iter_members,
    prepare_dest,
    publish,
    write_archive,
)
from edgebundle.errors import ArchiveError, BundleError, IntegrityError, ManifestError, SignatureError
from edgebundle.files import (
    CHUNK,
    move_dir,
    open_regular,
    read_small,
    remove_path,
    scan,
    size_and_sha256,
    temp_name,
)
from edgebundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from edgebundle.signing import (
    MAX_MANIFEST_BYTES,
    canonical_manifest_bytes,
    key_id,
    parse_manifest_bytes,
    sign_manifest,
    verify_and_parse,
)

ARCHIVE_SUFFIX = ".edgebundle"
RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_MAX_SIGNATURE_FILE_BYTES = 4096


@dataclass(frozen=True)
class BundleLocation:
    """Where `write_bundle` published a bundle, and the signed manifest it wrote."""

    directory: Path
    archive: Path
    manifest: Manifest


def bundle_name_for(name: str, version: int, target: str) -> str:
    return f"{name}-v{version}-{target}"


def _check_bundle_name(bundle_name: str) -> None:
    if not isinstance(bundle_name, str) or not is_file_name(bundle_name):
        raise BundleError(
            f"invalid bundle name {bundle_name!r}",
            hint="use letters, digits, '.', '_' or '-' (see bundle_name_for)",
        )


def _relabel(exc: BundleError, label: str) -> BundleError:
    """The same error, its message prefixed with the bundle it is about."""
    return type(exc)(f"{label}: {exc.message}", exc.hint)


# --------------------------------------------------------------------------- writing


def _signed_manifest(
    manifest: Manifest, entries: list[FileEntry], private_key: Ed25519PrivateKey
) -> Manifest:
    updated = manifest.model_copy(update={"files": entries, "key_id": key_id(private_key)})
    try:  # model_copy does not validate: do it now, from what will be written
        signed = Manifest.model_validate(updated.model_dump(mode="json"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "manifest"
        raise ManifestError(
            f"the manifest is invalid once its files are listed: {where}: {first.get('msg', 'invalid')}",
            hint="copy every artifact into the staging folder before write_bundle",
        ) from None
    data = canonical_manifest_bytes(signed)
    if canonical_manifest_bytes(parse_manifest_bytes(data)) != data:
        raise ManifestError(
            "the manifest does not read back to the same canonical bytes, so it could never verify",
            hint="this is a bug in the manifest schema; report it",
        )
    return signed


def write_bundle(
    staging: Path, manifest: Manifest, private_key: Ed25519PrivateKey, out_dir: Path, bundle_name: str
) -> BundleLocation:
    """List and hash the staged files, sign, and publish `out_dir/bundle_name` and its `.edgebundle` archive.

    `staging` holds the bundle's files except manifest.json and manifest.sig; it
    is consumed (moved into place) on success. On failure nothing is left under
    the final names but the previous bundle, if there was one, and the manifest
    files written into `staging` are removed again.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    _check_bundle_name(bundle_name)
    if not isinstance(manifest, Manifest):
        raise TypeError(f"write_bundle needs a Manifest, got {type(manifest).__name__}")
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"write_bundle needs an Ed25519 private key, got {type(private_key).__name__}")
    if staging.is_symlink() or not staging.is_dir():
        raise BundleError(f"staging folder {staging} is not a folder")

    label = f"staging folder {staging}"
    files = scan(staging, label)
    for rel in files:
        if rel in RESERVED:
            raise BundleError(
                f"{label} already holds {rel}", hint="it is written by the signer; leave it out"
            )
    entries = []
    for rel in files:
        size, digest = size_and_sha256(staging / rel)
        try:
            entries.append(FileEntry(path=rel, sha256=digest, size=size))
        except ValidationError:
            raise IntegrityError(f"{label}: file name {rel!r} cannot be listed in a manifest") from None
    signed = _signed_manifest(manifest, entries, private_key)
    manifest_bytes = canonical_manifest_bytes(signed)
    signature = sign_manifest(signed, private_key)

    out_dir.mkdir(parents=True, exist_ok=True)
    final_dir = out_dir / bundle_name
    final_archive = out_dir / f"{bundle_name}{ARCHIVE_SUFFIX}"
    written: list[Path] = []  # manifest files added to the caller's staging folder
    temp_archive = temp_dir = old_dir = None
    published_dir = False
    try:
        for name, data in ((MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature)):
            written.append(staging / name)
            write_new(staging / name, data)
        fd, temp = tempfile.mkstemp(prefix=f".{bundle_name}{ARCHIVE_SUFFIX}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        temp_archive = Path(temp)
        write_archive(staging, sorted([*files, *RESERVED]), bundle_name, temp_archive)
        os.chmod(temp_archive, 0o644)

        temp_dir = temp_name(out_dir, bundle_name, "tmp")
        move_dir(staging, temp_dir)
        written = []
        os.chmod(temp_dir, 0o755)
        fsync_dir(temp_dir)

        # Swap in: the old folder steps aside, the new one takes its name, then the archive.
        if os.path.lexists(final_dir):
            old_dir = temp_name(out_dir, bundle_name, "old")
            os.rename(final_dir, old_dir)
        os.rename(temp_dir, final_dir)
        temp_dir, published_dir = None, True
        os.replace(temp_archive, final_archive)
        temp_archive = None
    except BaseException:
        if published_dir:  # the archive failed after the folder went in: take the folder out again
            temp_dir = temp_name(out_dir, bundle_name, "tmp")
            os.rename(final_dir, temp_dir)
        if old_dir is not None:
            os.rename(old_dir, final_dir)
            old_dir = None
        for leftover in (temp_archive, temp_dir, *written):
            remove_path(leftover)
        raise
    finally:
        remove_path(old_dir)
    fsync_dir(out_dir)
    return BundleLocation(directory=final_dir, archive=final_archive, manifest=signed)


# --------------------------------------------------------------------------- reading and verifying


def _read_manifest_file(directory: Path, label: str, hint: str) -> bytes:
    """The bytes of a bundle folder's manifest.json, size-capped; ManifestError when unreadable or absent."""
    try:
        data = read_small(directory / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise ManifestError(f"{label}: cannot read {MANIFEST_NAME}: {exc.strerror or exc}") from None
    if data is None:
        raise ManifestError(f"{label} has no {MANIFEST_NAME}", hint=hint)
    return data


def read_manifest(bundle: Path) -> Manifest:
    """The manifest of a bundle folder or archive, WITHOUT checking the signature (for `inspect`)."""
    bundle = Path(bundle)
    if bundle.is_dir():
        data = _read_manifest_file(bundle, str(bundle), hint="is it a bundle folder?")
        return parse_manifest_bytes(data, str(bundle / MANIFEST_NAME))
    if not bundle.is_file():
        raise ManifestError(
            f"bundle {bundle} does not exist", hint=f"pass a bundle folder or its {ARCHIVE_SUFFIX} archive"
        )
    entries = iter_members(bundle, MAX_ARCHIVE_BYTES)
    try:
        for tar, member, parts in entries:
            if parts == [MANIFEST_NAME] and member.type != tarfile.DIRTYPE:
                if member.size > MAX_MANIFEST_BYTES:
                    raise ManifestError(
                        f"{bundle.name}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes"
                    )
                source = tar.extractfile(member)
                try:
                    data = source.read() if source is not None else b""
                except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                    raise ArchiveError(f"{bundle.name} is corrupt ({exc})", hint=REBUILD) from None
                return parse_manifest_bytes(data, f"{bundle.name}: {MANIFEST_NAME}")
    finally:
        entries.close()
    raise ManifestError(f"{bundle.name} holds no {MANIFEST_NAME}", hint="is it a bundle archive?")


def _verify_dir(directory: Path, public_key: Ed25519PublicKey, label: str) -> Manifest:
    manifest_bytes = _read_manifest_file(directory, label, hint="is it a bundle?")
    try:
        signature = read_small(directory / SIGNATURE_NAME, _MAX_SIGNATURE_FILE_BYTES)
    except OSError as exc:
        raise SignatureError(f"{label}: cannot read {SIGNATURE_NAME}: {exc.strerror or exc}") from None
    if signature is None:
        raise SignatureError(f"{label} has no {SIGNATURE_NAME}; it is not signed", hint=REBUILD)
    try:
        manifest = verify_and_parse(manifest_bytes, signature, public_key)
    except BundleError as exc:
        raise _relabel(exc, label) from None

    # The signature holds; now every file must be exactly what the manifest lists, and nothing more.
    listed = [entry.path for entry in manifest.files]
    if not listed:
        raise IntegrityError(f"{label}: the manifest lists no files", hint=REBUILD)
    seen: set[str] = set()
    for path in listed:
        if path in RESERVED:
            raise IntegrityError(f"{label}: the manifest lists {path} as a content file", hint=REBUILD)
        if path in seen:
            raise IntegrityError(f"{label}: the manifest lists {path} twice", hint=REBUILD)
        seen.add(path)
    present = scan(directory, label)
    present_set = set(present)
    for path in listed:
        if path not in present_set:
            raise IntegrityError(f"{label}: {path} is missing", hint=REBUILD)
    for path in present:
        if path not in seen and path not in RESERVED:
            raise IntegrityError(
                f"{label}: {path} is not listed in the manifest", hint="remove it, or rebuild the bundle"
            )
    for entry in manifest.files:
        try:
            size, digest = size_and_sha256(directory / entry.path)
        except OSError as exc:
            raise IntegrityError(f"{label}: cannot read {entry.path}: {exc.strerror or exc}") from None
        if size != entry.size:
            raise IntegrityError(
                f"{label}: {entry.path} is {size} bytes, the manifest says {entry.size}", hint=REBUILD
            )
        if digest != entry.sha256:
            raise IntegrityError(
                f"{label}: {entry.path} does not match its sha256 in the manifest; it changed after signing",
                hint=REBUILD,
            )
    return manifest


def verify_bundle(bundle: Path, public_key: Ed25519PublicKey, max_bytes: int = MAX_ARCHIVE_BYTES) -> Manifest:
    """Check a bundle folder or archive and return its manifest; raises a BundleError on any failure.

    The signature must hold with `public_key`, manifest.json must be canonical,
    every listed file must exist with its size and sha256, and no other file
    may exist besides manifest.json and manifest.sig. An archive is first
    extracted safely into a temporary folder (at most `max_bytes` of content).
    """
    bundle = Path(bundle)
    if bundle.is_dir():
        return _verify_dir(bundle, public_key, str(bundle))
    if not bundle.is_file():
        raise ManifestError(
            f"bundle {bundle} does not exist", hint=f"pass a bundle folder or its {ARCHIVE_SUFFIX} archive"
        )
    with tempfile.TemporaryDirectory(prefix="edgebundle-verify-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        extract_into(bundle, root, max_bytes)
        return _verify_dir(root, public_key, str(bundle))


def open_verified(
    bundle: Path, public_key: Ed25519PublicKey, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES
) -> Manifest:
    """Put a verified copy of a bundle (archive or folder) at `dest` and return its manifest.

    `dest` must be absent or an empty folder. The files are extracted (or
    copied) into a temporary sibling, written to disk, verified there, and only
    then renamed to `dest`: what is verified is what the caller gets, and on
    any failure `dest` is left as it was.
    """
    bundle, dest = Path(bundle), Path(dest)
    if not bundle.exists():
        raise ManifestError(
            f"bundle {bundle} does not exist", hint=f"pass a bundle folder or its {ARCHIVE_SUFFIX} archive"
        )
    work = prepare_dest(dest)
    try:
        if bundle.is_dir():
            for rel in scan(bundle, str(bundle)):
                target = work / rel
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                with os.fdopen(open_regular(bundle / rel), "rb") as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
        else:
            extract_into(bundle, work, max_bytes, durable=True)
        manifest = _verify_dir(work, public_key, str(bundle))
        publish(work, dest)
    except BaseException:
        remove_path(work)
        raise
    return manifest
