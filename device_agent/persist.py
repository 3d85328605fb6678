"""Small files written so that a kill or power loss at any instant leaves the old or the new content.

Write to a temporary sibling, fsync it, rename it over the target, fsync the
folder: readers see either the previous file or the complete new one, never a
torn write. Used for the agent's state (update machine, slots) and its
credentials (mode 0600 from the first byte).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably; the file has `mode` from its creation on."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: object, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode)


def remove_tree(path: Path) -> None:
    """Remove a file or a folder tree if it exists (links are removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def remove_temporaries(folder: Path) -> None:
    """Remove the hidden leftovers of interrupted atomic writes and extractions in `folder`."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            with contextlib.suppress(OSError):
                remove_tree(entry)
