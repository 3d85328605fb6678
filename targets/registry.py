"""Loading target profiles: the shipped ones, plus any folder in EDGECTL_TARGETS_PATH.

Adding a device of a known runtime is one YAML file, shipped here or kept by
the user in their own folder; a user profile of the same name wins.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from targets.schema import TargetProfile

SHIPPED_DIR = Path(__file__).parent / "profiles"
ENV_VAR = "EDGECTL_TARGETS_PATH"


class UnknownTargetError(ValueError):
    """No profile of that name."""


class ProfileError(ValueError):
    """A profile file that does not parse or validate."""


def load_profile_file(path: Path) -> TargetProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"target profile {path}: cannot read it: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"target profile {path}: expected a mapping of fields")
    try:
        profile = TargetProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "profile"
        raise ProfileError(f"target profile {path}: {where}: {first['msg']}") from exc
    if profile.name != path.stem:
        raise ProfileError(
            f"target profile {path}: name '{profile.name}' must match the file name '{path.stem}'"
        )
    return profile


def _load_dir(directory: Path) -> dict[str, TargetProfile]:
    return {p.stem: load_profile_file(p) for p in sorted(directory.glob("*.yaml"))}


@lru_cache(maxsize=1)
def _shipped() -> dict[str, TargetProfile]:
    return _load_dir(SHIPPED_DIR)


def load_profiles(extra_dirs: list[Path] | None = None) -> dict[str, TargetProfile]:
    profiles = dict(_shipped())
    env_dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    for directory in [*env_dirs, *(extra_dirs or [])]:
        if not directory.is_dir():
            raise ProfileError(f"{ENV_VAR} names {directory}, which is not a folder")
        profiles.update(_load_dir(directory))
    return profiles


def get_profile(name: str) -> TargetProfile:
    profiles = load_profiles()
    if name in profiles:
        return profiles[name]
    close = sorted(difflib.get_close_matches(name, list(profiles), n=3, cutoff=0.5))
    suggestion = ""
    if len(close) == 1:
        suggestion = f"; did you mean '{close[0]}'?"
    elif close:
        suggestion = "; did you mean one of " + ", ".join(f"'{c}'" for c in close) + "?"
    raise UnknownTargetError(f"unknown target '{name}'{suggestion} (run 'edgectl targets' to list them)")
