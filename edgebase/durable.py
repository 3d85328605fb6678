"""Files written so that a kill or power loss at any instant leaves the old content or the new, never half.

The recipe, said once for the whole project: write a new file exclusively (never through a link, with
its mode from the first byte), fsync it, rename it over the target, fsync the folder so the rename
itself survives. Bundles, signing keys, the agent's state and credentials, and TensorRT's engine
cache all write through here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where the folder cannot be synced."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` (FileExistsError if anything, a link included, is there) holding `data`, synced.

    The file has `mode` from its creation on, whatever the umask; a failed write leaves no file.
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; never adds any
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably; the file has `mode` from its creation on."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_new(temp, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: object, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode)


def remove_tree(path: Path) -> None:
    """Remove a file or a folder tree if it exists (links are removed, never followed)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)
