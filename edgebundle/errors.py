"""Bundle errors: one line each, saying what is wrong and, where it helps, what to do.

`str(error)` is the message followed by `; <hint>` when there is a hint, so a
caller that prints only the exception still shows the hint; `error.message`
and `error.hint` are there for one that prints them apart. No message ever
carries key material.
"""

from __future__ import annotations

from edgebase.errors import HintedError, escape_newlines


class BundleError(HintedError):
    """Base of every bundle problem."""

    exit_code = 4
    hint_in_str = True
    flatten = staticmethod(escape_newlines)


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
