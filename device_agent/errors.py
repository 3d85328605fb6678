"""Errors a person can act on: one line saying what is wrong, and a hint saying what to do."""

from __future__ import annotations

from edgebase.errors import HintedError, collapse_whitespace


class AgentError(HintedError):
    """A problem with the agent's configuration, credentials or input, for the CLI's `error:` / `hint:` lines."""

    hint_in_str = True
    flatten = staticmethod(collapse_whitespace)


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class RuntimeUnavailable(AgentError):
    """The bundle's runtime cannot run on this device (package missing, no GPU, not built yet)."""


class InferenceInputError(AgentError):
    """A request's input cannot be turned into the model's input (bad image, wrong tensor shape)."""
