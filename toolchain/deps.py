"""Optional dependencies: checked once, named by the extra that installs them.

Nothing here installs anything; a missing package is an error with a hint.
"""

from __future__ import annotations

import importlib.util
from functools import cache

from toolchain.errors import MissingDependencyError


@cache
def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, *, extra: str, purpose: str) -> None:
    """Raise MissingDependencyError unless `module` can be imported."""
    if not is_available(module):
        raise MissingDependencyError(module, extra, purpose)


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"
