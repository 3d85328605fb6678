"""Bundle errors: one line each, saying what is wrong and, where it helps, what to do."""


class BundleError(Exception):
    """Base of every bundle problem."""


class SignatureError(BundleError):
    """The signature does not match the manifest, or the manifest is not in canonical form."""


class IntegrityError(BundleError):
    """A file is missing, extra, or differs from its recorded size or sha256."""


class ManifestError(BundleError):
    """The manifest cannot be read or does not validate."""


class KeyFileError(BundleError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class ArchiveError(BundleError):
    """A bundle archive is corrupt or unsafe to extract."""
