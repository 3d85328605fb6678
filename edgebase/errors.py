"""The one shape of an error a person can act on: a message saying what is wrong, a hint saying what to do.

Every program prints these as `error: <message>` and `hint: <hint>` and exits with `exit_code`; none
shows a traceback for them. Each family chooses how its text is kept to one line (`flatten`) and
whether `str(error)` carries the hint too (`hint_in_str`), for callers that print only the exception.
"""

from __future__ import annotations


def keep(text: str) -> str:
    """The text as it is (the toolchain's messages, some of which are a small table)."""
    return text


def escape_newlines(text: str) -> str:
    """Line breaks shown as `\\n`: a crafted file name cannot forge a second log line, yet stays readable."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace, line breaks included, as one space."""
    return " ".join(text.split())


class HintedError(Exception):
    """Base of every error a person can fix."""

    exit_code = 2
    hint_in_str = False
    flatten = staticmethod(keep)

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = self.flatten(str(message))
        self.hint = self.flatten(str(hint)) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint_in_str and self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class MissingDependencyError(HintedError):
    """An optional package is not installed; the hint names the extra."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed",
            hint=f"install the extra: pip install 'edgectl[{extra}]'",
        )
        self.module = module
        self.extra = extra
