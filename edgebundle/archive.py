"""The `.edgebundle` archive (tar.gz): written reproducibly, extracted defensively.

Writing pins every varying bit of metadata (order, times, owners, modes, gzip header), so equal
inputs give equal bytes. Extraction refuses anything that could escape its destination (absolute
paths, '..', links, devices), more than `MAX_MEMBERS` members or more than `max_bytes` of content,
and checks the gzip checksum to the end of the stream.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edgebase.durable import fsync_dir
from edgebundle.errors import ArchiveError, BundleError
from edgebundle.files import CHUNK, CLOEXEC, NOFOLLOW, open_regular, remove_path, temp_name

MAX_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 4 * 2**30
GZIP_LEVEL = 6
# Tar headers, pax records and end-of-archive padding on top of the members' content.
_HEADER_ALLOWANCE = 4096 * (MAX_MEMBERS + 2) + CHUNK
_MAX_PADDING = CHUNK  # tar pads to 10 KiB records; anything much longer is not ours
REBUILD = "rebuild the bundle, or fetch it again"


def write_archive(source: Path, files: list[str], top: str, dest: Path) -> None:
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
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
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
                with os.fdopen(open_regular(source / rel), "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    tar.addfile(entry(f"{top}/{rel}", tarfile.REGTYPE, 0o644, size), handle)
        raw.flush()
        os.fsync(raw.fileno())


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


def iter_members(
    archive: Path, max_bytes: int
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, list[str]]]:
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
                        f"{label} holds {member.name!r} twice, or as both a file and a folder", hint=REBUILD
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
        for chunk in iter(lambda: reader.read(CHUNK), b""):
            padding += len(chunk)
            if chunk.count(0) != len(chunk) or padding > _MAX_PADDING:
                raise ArchiveError(f"{label} has data after the end of its tar stream", hint=REBUILD)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{label} is corrupt or not a bundle archive ({exc})", hint=REBUILD) from None
    except OSError as exc:
        raise ArchiveError(f"cannot read {label}: {exc.strerror or exc}") from None
    finally:
        raw.close()


def extract_into(archive: Path, dest: Path, max_bytes: int, *, durable: bool = False) -> None:
    """Extract the files below the archive's top folder into the existing empty folder `dest`."""
    label = archive.name
    for tar, member, parts in iter_members(archive, max_bytes):
        target = dest.joinpath(*parts)  # parts are checked: no '..', no absolute path, and dest has no links
        try:
            if member.type == tarfile.DIRTYPE:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise ArchiveError(f"{label}: cannot read member {member.name!r}", hint=REBUILD)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
            with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                written = 0
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                if written != member.size:
                    raise ArchiveError(f"{label}: member {member.name!r} is truncated", hint=REBUILD)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise ArchiveError(
                f"{label} holds {member.name!r} twice, or as both a file and a folder", hint=REBUILD
            ) from None
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{label} is corrupt ({exc})", hint=REBUILD) from None
        except OSError as exc:
            raise ArchiveError(
                f"cannot extract {member.name!r} from {label}: {exc.strerror or exc}"
            ) from None


def prepare_dest(dest: Path) -> Path:
    """Check `dest` is free (absent or an empty folder) and return a fresh temporary sibling to fill."""
    if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} already exists and is not an empty folder", hint="pass a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = temp_name(dest.parent, dest.name, "extract")
    work.mkdir(mode=0o755)
    return work


def publish(work: Path, dest: Path) -> None:
    os.rename(work, dest)  # replaces `dest` only if it is an empty folder
    fsync_dir(dest.parent)


def extract_archive(archive: Path, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Safely extract an archive's files (below its top folder) into `dest`, which must be absent or empty.

    Does not check the signature (see `open_verified`). Extracts into a
    temporary sibling first, so `dest` holds everything or nothing. Returns `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    work = prepare_dest(dest)
    try:
        extract_into(archive, work, max_bytes)
        publish(work, dest)
    except BaseException:
        remove_path(work)
        raise
    return dest
