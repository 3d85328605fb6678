"""The sweep after a kill: leftovers of interrupted atomic writes and extractions are removed at start.

The writes themselves (the agent's state, slots and credentials, 0600 from the
first byte) go through `edgebase.durable`: temporary sibling, fsync, rename,
fsync the folder. Their temporaries are hidden names, which is what this sweeps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgebase.durable import remove_tree


def remove_temporaries(folder: Path) -> None:
    """Remove the hidden leftovers of interrupted atomic writes and extractions in `folder`."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            with contextlib.suppress(OSError):
                remove_tree(entry)
