"""The content-addressed cache of build intermediates: ONNX exports and TensorFlow SavedModels.

One folder per kind under `$EDGECTL_CACHE_DIR` (default `~/.cache/edgectl`). An entry's name is the
hash of everything that changes its bytes (the caller's `payload`: source hash, shape, opset, library
versions), so a hit is always safe to reuse and a stale entry is never looked up again. An entry is
made in a temporary folder beside it and renamed into place, so a crash leaves no half entry and two
builds racing for the same key both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str) -> Path:
    root = os.environ.get("EDGECTL_CACHE_DIR") or Path.home() / ".cache" / "edgectl"
    return Path(root) / kind


def cache_key(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached(
    kind: str,
    name: str,
    make: Callable[[Path], Path],
    *,
    complete: Callable[[Path], bool],
    prefix: str = "edgectl-",
) -> tuple[Path, bool]:
    """(the entry `name` of `kind`, whether it was there): `make(workdir)` builds it when it is not.

    `make` returns the path it built inside `workdir`; `complete(path)` says whether an entry is whole.
    """
    directory = cache_dir(kind)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    if complete(final):
        return final, True
    with tempfile.TemporaryDirectory(prefix=prefix, dir=directory) as tmp:
        built = make(Path(tmp))
        try:
            os.replace(built, final)
        except OSError:  # another build filled the entry first
            if not complete(final):
                raise
    return final, False
