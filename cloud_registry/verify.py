"""Verify an uploaded or job-built bundle archive against the registry's trusted keys."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_registry.crud import Invalid
from edgebundle import read_manifest, verify_bundle
from edgebundle.manifest import Manifest
from registry_api.schemas import INT32_MAX


def verify_trusted(archive: Path, trusted_keys: dict[str, Ed25519PublicKey], max_bytes: int) -> Manifest:
    """The manifest of a bundle signed by a trusted key, every file checked; Invalid or BundleError if not."""
    if not trusted_keys:
        raise Invalid(
            "this registry trusts no signing key yet; set EDGECTL_REGISTRY_TRUSTED_KEYS to the .pub files"
        )
    claimed = read_manifest(archive).key_id
    key = trusted_keys.get(claimed or "")
    if key is None:
        raise Invalid(f"the bundle is signed by key {claimed}, which this registry does not trust")
    manifest = verify_bundle(archive, key, max_bytes=max_bytes)
    if manifest.version > INT32_MAX:
        raise Invalid(f"version {manifest.version} is out of range")
    return manifest
