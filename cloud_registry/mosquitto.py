"""Mosquitto's password file and ACL for the fleet, from the registry's records.

The ACL gives the registry the whole tree it serves and every other user, by
pattern rules on its username (= its device id), only its own topics:

    pattern write edgectl/data/<fleet>/%u/#     its presence, telemetry, update status
    pattern read  edgectl/cmd/<fleet>/%u/#      its desired model

Device ids are `[a-z0-9-]`, so `%u` can never widen into another device's tree.
Mosquitto reloads both files on SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgewire.topics import COMMAND, DATA, ROOT, check_id


@dataclass(frozen=True)
class BrokerUser:
    username: str
    password_hash: str


def password_file(users: list[BrokerUser]) -> str:
    lines = []
    for user in sorted(users, key=lambda u: u.username):
        if ":" in user.username or "\n" in user.username or "\n" in user.password_hash:
            raise ValueError(f"unusable broker username {user.username!r}")
        lines.append(f"{user.username}:{user.password_hash}")
    return "\n".join(lines) + "\n"


def acl_file(fleet: str, registry_user: str | None) -> str:
    check_id(fleet, "fleet id")
    lines = ["# Written by the edgectl registry; edits are overwritten.", ""]
    if registry_user:
        lines += [
            f"user {registry_user}",
            f"topic read {ROOT}/{DATA}/#",
            f"topic readwrite {ROOT}/{COMMAND}/#",
            "",
        ]
    lines += [
        "# Every device: write its own data, read its own commands, nothing else.",
        f"pattern write {ROOT}/{DATA}/{fleet}/%u/#",
        f"pattern read {ROOT}/{COMMAND}/{fleet}/%u/#",
    ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o640)  # the broker's group reads it (mosquitto drops root for its own user)
    os.replace(temp, path)


def write_files(directory: Path, passwd: str, acl: str, pid_file: Path | None = None) -> tuple[Path, Path]:
    """Write mosquitto.passwd and mosquitto.acl atomically, and SIGHUP the broker whose pid file is given."""
    directory.mkdir(parents=True, exist_ok=True)
    passwd_path, acl_path = directory / "mosquitto.passwd", directory / "mosquitto.acl"
    _write_atomic(passwd_path, passwd)
    _write_atomic(acl_path, acl)
    if pid_file is not None:
        # No broker to reload (yet) is fine: it reads the files when it starts.
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
    return passwd_path, acl_path
