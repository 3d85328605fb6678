"""Write, read and verify bundles: a folder plus one reproducible `.edgebundle` archive (tar.gz).

A bundle folder holds the staged files (artifacts, labels, ...), `manifest.json`
(canonical bytes) and `manifest.sig`. The archive holds the same files under one
top-level folder named like the bundle, with every varying bit of metadata
pinned (order, times, owners, modes, gzip header), so equal inputs give equal
bytes.

Publishing is atomic: the folder and the archive appear under their final
names only once complete; a failed write leaves the previous bundle of that
name intact and no temporary files behind. Extraction refuses anything that
could escape its destination (absolute paths, '..', links, devices), more than
`MAX_MEMBERS` members or more than `max_bytes` of content, and checks the gzip
checksum to the end of the stream.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgebase.durable import fsync_dir, write_new
from edgebase.ids import is_file_name
from edgebundle.errors import ArchiveError, BundleError, IntegrityError, ManifestError, SignatureError
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
MAX_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 4 * 2**30
RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_CHUNK = 1 << 20
_MAX_SIGNATURE_FILE_BYTES = 4096
_GZIP_LEVEL = 6
# Tar headers, pax records and end-of-archive padding on top of the members' content.
_HEADER_ALLOWANCE = 4096 * (MAX_MEMBERS + 2) + _CHUNK
_MAX_PADDING = _CHUNK  # tar pads to 10 KiB records; anything much longer is not ours
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_REBUILD = "rebuild the bundle, or fetch it again"


@dataclass(frozen=True)
class BundleLocation:
    """Where `write_bundle` published a bundle, and the signed manifest it wrote."""

    directory: Path
    archive: Path
    manifest: Manifest


def bundle_name_for(name: str, version: int, target: str) -> str:
    return f"{name}-v{version}-{target}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- helpers


def _scan(root: Path, label: str) -> list[str]:
    """Relative posix paths of every regular file under `root`, sorted; refuses links and special files."""

    def fail(exc: OSError) -> None:
        raise IntegrityError(f"{label}: cannot list {exc.filename}: {exc.strerror or exc}")

    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):  # never follows links
        base = Path(dirpath)
        for name in (*dirnames, *filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise IntegrityError(
                    f"{label}: {rel} is a symbolic link",
                    hint="bundles hold plain files only; copy the file in",
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise IntegrityError(
                    f"{label}: {rel} is not a regular file", hint="bundles hold plain files only"
                )
            files.append(rel)
    return sorted(files)


def _open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, refusing a symbolic link at `path` itself."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    return fd


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(_open_regular(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _read_small(path: Path, limit: int) -> bytes | None:
    """The bytes of a small regular file, None if it does not exist; OSError for a link or folder."""
    try:
        fd = _open_regular(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def _remove(path: Path | None) -> None:
    """Remove a file, link or folder tree if it exists; never raises."""
    if path is None:
        return
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _temp_name(parent: Path, stem: str, kind: str) -> Path:
    """A fresh hidden name in `parent` (nothing is created)."""
    for _ in range(100):
        candidate = parent / f".{stem}.{kind}-{secrets.token_hex(6)}"
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def _move_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target` (which must not exist); copy then remove across file systems."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        try:
            shutil.copytree(source, target, symlinks=True)
        except BaseException:
            _remove(target)
            raise
        shutil.rmtree(source)


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


def _write_archive(source: Path, files: list[str], top: str, dest: Path) -> None:
    """Write `files` (relative posix paths under `source`, sorted) as a deterministic tar.gz at `dest`.

    Members sit under the folder `top`, parents before children, with mtime 0,
    uid/gid 0, empty owner names, mode 0644 for files and 0755 for folders. The
    gzip header carries no file name and mtime 0.
    """

    def entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with open(dest, "wb") as raw:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(entry(top, tarfile.DIRTYPE, 0o755))
            folders: set[str] = set()
            for rel in files:
                parts = rel.split("/")
                for depth in range(1, len(parts)):
                    folder = "/".join(parts[:depth])
                    if folder not in folders:
                        folders.add(folder)
                        tar.addfile(entry(f"{top}/{folder}", tarfile.DIRTYPE, 0o755))
                with os.fdopen(_open_regular(source / rel), "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    tar.addfile(entry(f"{top}/{rel}", tarfile.REGTYPE, 0o644, size), handle)
        raw.flush()
        os.fsync(raw.fileno())


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
    files = _scan(staging, label)
    for rel in files:
        if rel in RESERVED:
            raise BundleError(
                f"{label} already holds {rel}", hint="it is written by the signer; leave it out"
            )
    entries = []
    for rel in files:
        size, digest = _size_and_sha256(staging / rel)
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
        _write_archive(staging, sorted([*files, *RESERVED]), bundle_name, temp_archive)
        os.chmod(temp_archive, 0o644)

        temp_dir = _temp_name(out_dir, bundle_name, "tmp")
        _move_dir(staging, temp_dir)
        written = []
        os.chmod(temp_dir, 0o755)
        fsync_dir(temp_dir)

        # Swap in: the old folder steps aside, the new one takes its name, then the archive.
        if os.path.lexists(final_dir):
            old_dir = _temp_name(out_dir, bundle_name, "old")
            os.rename(final_dir, old_dir)
        os.rename(temp_dir, final_dir)
        temp_dir, published_dir = None, True
        os.replace(temp_archive, final_archive)
        temp_archive = None
    except BaseException:
        if published_dir:  # the archive failed after the folder went in: take the folder out again
            temp_dir = _temp_name(out_dir, bundle_name, "tmp")
            os.rename(final_dir, temp_dir)
        if old_dir is not None:
            os.rename(old_dir, final_dir)
            old_dir = None
        for leftover in (temp_archive, temp_dir, *written):
            _remove(leftover)
        raise
    finally:
        _remove(old_dir)
    fsync_dir(out_dir)
    return BundleLocation(directory=final_dir, archive=final_archive, manifest=signed)


# --------------------------------------------------------------------------- archives


class _Budget:
    """A read-only file object that raises ArchiveError once more than `limit` bytes went through."""

    def __init__(self, fileobj: BinaryIO, limit: int, label: str) -> None:
        self._fileobj, self._limit, self._label = fileobj, limit, label
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fileobj.read(size)
        self.total += len(data)
        if self.total > self._limit:
            raise ArchiveError(f"{self._label} unpacks to more than {self._limit} bytes")
        return data


def _member_parts(name: str, label: str) -> list[str]:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ArchiveError(f"{label} holds an unsafe path {name!r}", hint="refusing to extract it")
    return parts


def _members(archive: Path, max_bytes: int) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, list[str]]]:
    """Each member of a bundle archive with its path inside the top folder, after the safety checks.

    Yields (tar, member, parts below the top folder) for regular files and
    folders; raises ArchiveError on an unsafe or corrupt archive. When the
    caller consumes the whole iterator, the rest of the stream is read too, so
    the gzip checksum and length are checked and trailing garbage is refused.
    """
    label = archive.name
    try:
        raw = open(archive, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ArchiveError(f"cannot read {archive}: {exc.strerror or exc}") from None
    try:
        reader = _Budget(gzip.GzipFile(fileobj=raw, mode="rb"), max_bytes + _HEADER_ALLOWANCE, label)
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            top = None
            total = 0
            seen: set[str] = set()
            files: set[str] = set()
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"{label} has more than {MAX_MEMBERS} members", hint="not a bundle")
                parts = _member_parts(member.name, label)
                if top is None:
                    top = parts[0]
                elif parts[0] != top:
                    raise ArchiveError(f"{label} has more than one top-level folder ({top!r}, {parts[0]!r})")
                if member.name in seen or any("/".join(parts[:i]) in files for i in range(1, len(parts))):
                    raise ArchiveError(
                        f"{label} holds {member.name!r} twice, or as both a file and a folder", hint=_REBUILD
                    )
                seen.add(member.name)
                if member.type == tarfile.DIRTYPE:
                    yield tar, member, parts[1:]
                    continue
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise ArchiveError(
                        f"{label} holds a link, device or other special member {member.name!r}",
                        hint="bundles hold plain files only; refusing to extract it",
                    )
                if len(parts) == 1:
                    raise ArchiveError(f"{label} holds a file {member.name!r} outside its top-level folder")
                files.add(member.name)
                total += member.size
                if total > max_bytes:
                    raise ArchiveError(f"{label} unpacks to more than {max_bytes} bytes")
                yield tar, member, parts[1:]
            if top is None:
                raise ArchiveError(f"{label} is an empty archive")
        # Past the end of the tar there is only zero padding; reading to the end checks the gzip trailer.
        padding = 0
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            padding += len(chunk)
            if chunk.count(0) != len(chunk) or padding > _MAX_PADDING:
                raise ArchiveError(f"{label} has data after the end of its tar stream", hint=_REBUILD)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{label} is corrupt or not a bundle archive ({exc})", hint=_REBUILD) from None
    except OSError as exc:
        raise ArchiveError(f"cannot read {label}: {exc.strerror or exc}") from None
    finally:
        raw.close()


def _extract_into(archive: Path, dest: Path, max_bytes: int, *, durable: bool = False) -> None:
    """Extract the files below the archive's top folder into the existing empty folder `dest`."""
    label = archive.name
    for tar, member, parts in _members(archive, max_bytes):
        target = dest.joinpath(*parts)  # parts are checked: no '..', no absolute path, and dest has no links
        try:
            if member.type == tarfile.DIRTYPE:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise ArchiveError(f"{label}: cannot read member {member.name!r}", hint=_REBUILD)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
            with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                written = 0
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                if written != member.size:
                    raise ArchiveError(f"{label}: member {member.name!r} is truncated", hint=_REBUILD)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise ArchiveError(
                f"{label} holds {member.name!r} twice, or as both a file and a folder", hint=_REBUILD
            ) from None
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{label} is corrupt ({exc})", hint=_REBUILD) from None
        except OSError as exc:
            raise ArchiveError(
                f"cannot extract {member.name!r} from {label}: {exc.strerror or exc}"
            ) from None


def _prepare_dest(dest: Path) -> Path:
    """Check `dest` is free (absent or an empty folder) and return a fresh temporary sibling to fill."""
    if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} already exists and is not an empty folder", hint="pass a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = _temp_name(dest.parent, dest.name, "extract")
    work.mkdir(mode=0o755)
    return work


def _publish(work: Path, dest: Path) -> None:
    os.rename(work, dest)  # replaces `dest` only if it is an empty folder
    fsync_dir(dest.parent)


def extract_archive(archive: Path, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Safely extract an archive's files (below its top folder) into `dest`, which must be absent or empty.

    Does not check the signature (see `open_verified`). Extracts into a
    temporary sibling first, so `dest` holds everything or nothing. Returns `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    work = _prepare_dest(dest)
    try:
        _extract_into(archive, work, max_bytes)
        _publish(work, dest)
    except BaseException:
        _remove(work)
        raise
    return dest


# --------------------------------------------------------------------------- reading and verifying


def _read_manifest_file(directory: Path, label: str, hint: str) -> bytes:
    """The bytes of a bundle folder's manifest.json, size-capped; ManifestError when unreadable or absent."""
    try:
        data = _read_small(directory / MANIFEST_NAME, MAX_MANIFEST_BYTES)
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
    members = _members(bundle, MAX_ARCHIVE_BYTES)
    try:
        for tar, member, parts in members:
            if parts == [MANIFEST_NAME] and member.type != tarfile.DIRTYPE:
                if member.size > MAX_MANIFEST_BYTES:
                    raise ManifestError(
                        f"{bundle.name}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes"
                    )
                source = tar.extractfile(member)
                try:
                    data = source.read() if source is not None else b""
                except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                    raise ArchiveError(f"{bundle.name} is corrupt ({exc})", hint=_REBUILD) from None
                return parse_manifest_bytes(data, f"{bundle.name}: {MANIFEST_NAME}")
    finally:
        members.close()
    raise ManifestError(f"{bundle.name} holds no {MANIFEST_NAME}", hint="is it a bundle archive?")


def _verify_dir(directory: Path, public_key: Ed25519PublicKey, label: str) -> Manifest:
    manifest_bytes = _read_manifest_file(directory, label, hint="is it a bundle?")
    try:
        signature = _read_small(directory / SIGNATURE_NAME, _MAX_SIGNATURE_FILE_BYTES)
    except OSError as exc:
        raise SignatureError(f"{label}: cannot read {SIGNATURE_NAME}: {exc.strerror or exc}") from None
    if signature is None:
        raise SignatureError(f"{label} has no {SIGNATURE_NAME}; it is not signed", hint=_REBUILD)
    try:
        manifest = verify_and_parse(manifest_bytes, signature, public_key)
    except BundleError as exc:
        raise _relabel(exc, label) from None

    # The signature holds; now every file must be exactly what the manifest lists, and nothing more.
    listed = [entry.path for entry in manifest.files]
    if not listed:
        raise IntegrityError(f"{label}: the manifest lists no files", hint=_REBUILD)
    seen: set[str] = set()
    for path in listed:
        if path in RESERVED:
            raise IntegrityError(f"{label}: the manifest lists {path} as a content file", hint=_REBUILD)
        if path in seen:
            raise IntegrityError(f"{label}: the manifest lists {path} twice", hint=_REBUILD)
        seen.add(path)
    present = _scan(directory, label)
    present_set = set(present)
    for path in listed:
        if path not in present_set:
            raise IntegrityError(f"{label}: {path} is missing", hint=_REBUILD)
    for path in present:
        if path not in seen and path not in RESERVED:
            raise IntegrityError(
                f"{label}: {path} is not listed in the manifest", hint="remove it, or rebuild the bundle"
            )
    for entry in manifest.files:
        try:
            size, digest = _size_and_sha256(directory / entry.path)
        except OSError as exc:
            raise IntegrityError(f"{label}: cannot read {entry.path}: {exc.strerror or exc}") from None
        if size != entry.size:
            raise IntegrityError(
                f"{label}: {entry.path} is {size} bytes, the manifest says {entry.size}", hint=_REBUILD
            )
        if digest != entry.sha256:
            raise IntegrityError(
                f"{label}: {entry.path} does not match its sha256 in the manifest; it changed after signing",
                hint=_REBUILD,
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
        _extract_into(bundle, root, max_bytes)
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
    work = _prepare_dest(dest)
    try:
        if bundle.is_dir():
            for rel in _scan(bundle, str(bundle)):
                target = work / rel
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                with os.fdopen(_open_regular(bundle / rel), "rb") as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
        else:
            _extract_into(bundle, work, max_bytes, durable=True)
        manifest = _verify_dir(work, public_key, str(bundle))
        _publish(work, dest)
    except BaseException:
        _remove(work)
        raise
    return manifest
