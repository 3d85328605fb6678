"""Bundle errors: one line each, saying what is wrong and, where it helps, what to do.

`str(error)` is the message followed by `; <hint>` when there is a hint, so a
caller that prints only the exception still shows the hint; `error.message`
and `error.hint` are there for one that prints them apart. No message ever
carries key material.
"""

from __future__ import annotations


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class BundleError(Exception):
    """Base of every bundle problem."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = _one_line(message)
        self.hint = _one_line(hint) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class SignatureError(BundleError):
    """The signature is missing or malformed, does not match, or the manifest is not in canonical form."""


class IntegrityError(BundleError):
    """A file is missing, extra, a link, or differs from its recorded size or sha256."""


class ManifestError(BundleError):
    """The manifest is missing, cannot be read or does not validate."""


class KeyFileError(BundleError):
    """A key file is missing, unreadable, not PEM, not an Ed25519 key, or would be overwritten."""


class ArchiveError(BundleError):
    """A bundle archive is corrupt, too large, or unsafe to extract."""
