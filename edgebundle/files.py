"""File primitives the bundle code shares: regular files only (no links), hashed in chunks, moved and
removed without leaving temporaries."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from edgebundle.errors import IntegrityError

CHUNK = 1 << 20
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan(root: Path, label: str) -> list[str]:
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


def open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, refusing a symbolic link at `path` itself."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    return fd


def size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(open_regular(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_small(path: Path, limit: int) -> bytes | None:
    """The bytes of a small regular file, None if it does not exist; OSError for a link or folder."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def remove_path(path: Path | None) -> None:
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


def temp_name(parent: Path, stem: str, kind: str) -> Path:
    """A fresh hidden name in `parent` (nothing is created)."""
    for _ in range(100):
        candidate = parent / f".{stem}.{kind}-{secrets.token_hex(6)}"
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def move_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target` (which must not exist); copy then remove across file systems."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        try:
            shutil.copytree(source, target, symlinks=True)
        except BaseException:
            remove_path(target)
            raise
        shutil.rmtree(source)
