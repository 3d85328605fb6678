"""Errors a user can act on: one line saying what went wrong, one hint saying what to do.

The CLI prints `error: <message>` and `hint: <hint>` and exits non-zero; it
never shows a traceback for these. Anything else is a bug and does show one.
"""

from __future__ import annotations


class EdgectlError(Exception):
    """Base class for every error the user can fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UserInputError(EdgectlError):
    """A flag, path or file given by the user is wrong."""


class MissingDependencyError(EdgectlError):
    """An optional package is not installed; the hint names the extra."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed",
            hint=f"install the extra: pip install 'edgectl[{extra}]'",
        )
        self.module = module
        self.extra = extra


class ConverterUnavailableError(EdgectlError):
    """The target's runtime has no converter in this version of edgectl."""


class ExportError(EdgectlError):
    """The source model could not be exported to ONNX."""


class CalibrationError(EdgectlError):
    """Calibration data is missing or does not fit the model."""


class AccuracyGateError(EdgectlError):
    """The artifact loses more accuracy than --max-drop allows, even after repair."""

    exit_code = 3

    # the validation report of the best attempt, and the table of every attempt, when there was a search
    report = None
    attempts: list[dict] | None = None


class Int8TooSlowError(AccuracyGateError):
    """INT8 held the accuracy budget only in a form slower than the runtime's FP32 artifact."""
