"""The bundle contract: manifest schema, Ed25519 signing, and reading/writing bundles.

Imports only pydantic, cryptography and the stdlib, so the device agent and
the registry use it without the toolchain.
"""

from edgebundle.bundle import (
    ARCHIVE_SUFFIX,
    BundleLocation,
    bundle_name_for,
    extract_archive,
    open_verified,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from edgebundle.errors import (
    ArchiveError,
    BundleError,
    IntegrityError,
    KeyFileError,
    ManifestError,
    SignatureError,
)
from edgebundle.manifest import SCHEMA_VERSION, Manifest
from edgebundle.signing import (
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_manifest_signature,
)

__all__ = [
    "ARCHIVE_SUFFIX",
    "SCHEMA_VERSION",
    "ArchiveError",
    "BundleError",
    "BundleLocation",
    "IntegrityError",
    "KeyFileError",
    "Manifest",
    "ManifestError",
    "SignatureError",
    "bundle_name_for",
    "canonical_manifest_bytes",
    "extract_archive",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_verified",
    "read_manifest",
    "sha256_file",
    "sign_manifest",
    "verify_bundle",
    "verify_manifest_signature",
    "write_bundle",
]
