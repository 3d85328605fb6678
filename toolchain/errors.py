"""The toolchain's errors: one line saying what went wrong, one hint saying what to do.

They share `edgebase.errors.HintedError` with the bundle's, the agent's and the registry client's. The
CLI prints `error: <message>` and `hint: <hint>` and exits non-zero; it never shows a traceback for
these. Anything else is a bug and does show one.
"""

from __future__ import annotations

from edgebase.errors import HintedError, MissingDependencyError

__all__ = ["EdgectlError", "MissingDependencyError", "UserInputError"]


class EdgectlError(HintedError):
    """Base class for every toolchain error the user can fix (a message may be a small table)."""


class UserInputError(EdgectlError):
    """A flag, path or file given by the user is wrong."""


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
