"""The bundle contract: manifest schema, Ed25519 signing, and reading/writing bundles.

Imports only pydantic, cryptography and the stdlib, so the device agent and
the registry use it without the toolchain (no numpy, no torch).
"""

from edgebundle.archive import MAX_ARCHIVE_BYTES, MAX_MEMBERS, extract_archive
from edgebundle.bundle import (
    ARCHIVE_SUFFIX,
    BundleLocation,
    bundle_name_for,
    open_verified,
    read_manifest,
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
from edgebundle.files import sha256_file
from edgebundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, SIGNATURE_NAME, FileEntry, Manifest
from edgebundle.signing import (
    canonical_json,
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    parse_manifest_bytes,
    sign_manifest,
    verify_and_parse,
    verify_manifest_signature,
)

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_NAME",
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBERS",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "ArchiveError",
    "BundleError",
    "BundleLocation",
    "FileEntry",
    "IntegrityError",
    "KeyFileError",
    "Manifest",
    "ManifestError",
    "SignatureError",
    "bundle_name_for",
    "canonical_json",
    "canonical_manifest_bytes",
    "extract_archive",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_verified",
    "parse_manifest_bytes",
    "read_manifest",
    "sha256_file",
    "sign_manifest",
    "verify_and_parse",
    "verify_bundle",
    "verify_manifest_signature",
    "write_bundle",
]
