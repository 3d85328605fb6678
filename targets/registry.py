"""Loading target profiles: the shipped ones, plus any folder in EDGECTL_TARGETS_PATH or passed in.

Adding a device of a known runtime is one YAML file, shipped here or kept by the user in
their own folder. Precedence, lowest first: shipped profiles, then the EDGECTL_TARGETS_PATH
folders in order, then `extra_dirs` in order; a later profile of the same name wins.
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
    """A profile file that does not parse or validate, or a profile folder that is not there."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        return f"{exc.problem}{where}"
    return _one_line(exc)


def load_profile_file(path: Path) -> TargetProfile:
    """Parse and validate one profile file; its stem must equal the profile's name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"target profile {path}: cannot read it: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(f"target profile {path}: not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProfileError(f"target profile {path}: expected a mapping of fields, got {got}")
    try:
        profile = TargetProfile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "profile"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ProfileError(f"target profile {path}: {where}: {_one_line(first['msg'])}{more}") from exc
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


def _env_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def load_profiles(extra_dirs: list[Path] | None = None) -> dict[str, TargetProfile]:
    """Every profile by name: shipped, then EDGECTL_TARGETS_PATH folders, then `extra_dirs`.

    Only the shipped profiles are cached; user folders are read on every call, so a change
    to the environment variable or to a user's files is seen at once.
    """
    profiles = dict(_shipped())
    sources = [(d, f"{ENV_VAR} names") for d in _env_dirs()]
    sources += [(Path(d), "extra profile folder") for d in extra_dirs or []]
    for directory, origin in sources:
        if not directory.is_dir():
            raise ProfileError(f"{origin} {directory}, which is not a folder")
        profiles.update(_load_dir(directory))
    return profiles


def _suggestions(name: str, known: list[str]) -> list[str]:
    """The closest names, several when about equally close ('rpi' -> rpi4, rpi5), at most five.

    A name the query begins (3+ characters: 'stm32', 'jetson') counts as close too.
    """
    query = name.strip().lower()
    picked = {k for k in known if len(query) >= 3 and k.startswith(query)}
    close = difflib.get_close_matches(query, known, n=5, cutoff=0.6)
    if close:
        best = difflib.SequenceMatcher(None, query, close[0]).ratio()
        picked |= {c for c in close if difflib.SequenceMatcher(None, query, c).ratio() >= best - 0.1}
    return sorted(picked)[:5]


def get_profile(name: str) -> TargetProfile:
    """The profile called `name`; UnknownTargetError (with a did-you-mean) if there is none."""
    profiles = load_profiles()
    if name in profiles:
        return profiles[name]
    close = _suggestions(name, sorted(profiles))
    suggestion = ""
    if close:
        quoted = [f"'{c}'" for c in close]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        suggestion = f"; did you mean {listed}?"
    raise UnknownTargetError(f"unknown target '{name}'{suggestion} (run 'edgectl targets' to list them)")
