"""Private files and folders: what only the registry's own user may read (token and password hashes,
telemetry, keys). Folders 0700, files 0600, made so on creation and tightened when they exist already."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cloud_registry")


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except OSError as exc:
        log.warning("cannot make %s private (%o): %s", path, mode, exc.strerror)


def private_dir(path: Path) -> Path:
    """Create the folder (0700) when absent, or take group and others' access away from an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create an empty file (0600) when absent, or make an existing one 0600; its folder is made private."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(path, 0o600)
    return path
