"""Target profiles as data: one YAML file per device kind, validated by `targets.schema`.

Light on purpose (pydantic and pyyaml only): the device agent imports it.
"""

from targets.registry import ProfileError, UnknownTargetError, get_profile, load_profiles
from targets.schema import TargetProfile

__all__ = ["ProfileError", "TargetProfile", "UnknownTargetError", "get_profile", "load_profiles"]
