"""Errors a person can act on: one line saying what is wrong, and a hint saying what to do."""

from __future__ import annotations


class AgentError(Exception):
    """A problem with the agent's configuration, credentials or input, for the CLI's `error:` / `hint:` lines."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = " ".join(str(message).split())
        self.hint = " ".join(str(hint).split()) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class RuntimeUnavailable(AgentError):
    """The bundle's runtime cannot run on this device (package missing, no GPU, not built yet)."""


class InferenceInputError(AgentError):
    """A request's input cannot be turned into the model's input (bad image, wrong tensor shape)."""
