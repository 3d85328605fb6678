"""Crash points for the kill tests: inert unless EDGECTL_AGENT_CRASH_FILE names a file.

The tests write one line into that file, e.g. `enter:VERIFYING`,
`installing:slot-removed` or `download:12345` (a byte offset of the archive),
optionally with a count (`healthcheck:checked*3`: die there three starts in
a row). When the agent reaches the point it counts down (removing the file
at zero, so the restarted agent goes on) and SIGKILLs itself: no cleanup, no
flushing, exactly what a power cut or the OOM killer does to the process.
Reading the file at each point lets a test arm the next crash in a running agent.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV_VAR = "EDGECTL_AGENT_CRASH_FILE"


def _armed() -> str | None:
    name = os.environ.get(ENV_VAR)
    if not name:
        return None
    try:
        return Path(name).read_text().strip().split("*")[0]
    except OSError:
        return None


def _die() -> None:
    path = Path(os.environ[ENV_VAR])
    point, _, count = path.read_text().strip().partition("*")
    left = int(count or 1) - 1
    if left > 0:
        path.write_text(f"{point}*{left}")
    else:
        path.unlink(missing_ok=True)
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    """SIGKILL this process if a test armed the crash point `name`."""
    if _armed() == name:
        _die()


def download_crash_offset() -> int | None:
    """The archive byte offset at which a test wants the download killed, if any."""
    armed = _armed()
    if armed and armed.startswith("download:"):
        return int(armed.split(":", 1)[1])
    return None


def crash_now() -> None:
    """Die at once (the download reached its armed offset)."""
    _die()
