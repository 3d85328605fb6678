"""Ed25519 keys, the canonical form of a manifest, and its detached signature.

The signed bytes are the canonical JSON of the manifest (sorted keys, no
whitespace, UTF-8, no NaN). `manifest.json` is written as exactly those bytes
and a verifier rejects a file that is not, so one manifest has one byte form:
nobody can add whitespace, reorder or duplicate keys and keep the signature.

`manifest.sig` holds the base64 of the 64-byte signature and a newline, and
must be exactly that (re-encoding the decoded signature gives the file back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgebase.durable import write_new
from edgebase.ids import is_name
from edgebundle.errors import KeyFileError, ManifestError, SignatureError
from edgebundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_GENERATE_HINT = "generate a key pair with 'edgectl keys generate --out DIR'"


# --------------------------------------------------------------------------- keys


def generate_keypair(out_dir: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write `<name>.key` (PEM PKCS8, mode 0600) and `<name>.pub` (PEM SubjectPublicKeyInfo).

    Never overwrites: if either file exists, raises KeyFileError and writes nothing.
    Returns (private_key_path, public_key_path).
    """
    if not is_name(name):
        raise KeyFileError(
            f"invalid key name {name!r}", hint="use letters, digits, '.', '_' or '-', e.g. 'signing'"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create key folder {out_dir}: {exc.strerror or exc}") from exc
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    for path in (key_path, pub_path):
        if os.path.lexists(path):
            raise KeyFileError(
                f"{path} already exists; refusing to overwrite a key",
                hint="pick another --name or --out, or delete the old key pair deliberately",
            )

    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(key_path, private_pem, 0o600)
    try:
        _write_exclusive(pub_path, public_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    try:
        write_new(path, data, mode)
    except FileExistsError as exc:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a key",
            hint="pick another --name or --out, or delete the old key pair deliberately",
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} not found", hint=_GENERATE_HINT) from exc
    except IsADirectoryError as exc:
        raise KeyFileError(f"{what} {path} is a folder, not a key file", hint=_GENERATE_HINT) from exc
    except OSError as exc:
        raise KeyFileError(
            f"cannot read {what} {path}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what} {path} is too large to be a key file", hint=_GENERATE_HINT)
    return data


def _kind(key: object) -> str:
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.lstrip("_") or "unknown"


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key; KeyFileError names the path on any failure."""
    path = Path(path)
    data = _read_key_file(path, "signing key")
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise KeyFileError(
            f"{path} is a public key, but signing needs the private key",
            hint="pass the .key file, not the .pub file",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted, and no password given
        raise KeyFileError(
            f"signing key {path} is encrypted; edgectl reads unencrypted PKCS8 PEM keys",
            hint=_GENERATE_HINT,
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key", hint=_GENERATE_HINT) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} is a {_kind(key)} key; bundles are signed with Ed25519 keys", hint=_GENERATE_HINT
        )
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key; KeyFileError names the path on any failure."""
    path = Path(path)
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(
            f"{path} is a private key; verifying needs only the public key",
            hint="pass the .pub file and keep the .key file on the signing host",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{path} is not a PEM public key", hint="pass the .pub file written by 'edgectl keys generate'"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{path} is a {_kind(key)} key; bundles are verified with Ed25519 keys",
            hint="pass the .pub file written by 'edgectl keys generate'",
        )
    return key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError(f"key_id needs an Ed25519 key, got {type(public_key).__name__}")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------- canonical form


def canonical_json(data: dict) -> bytes:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_manifest_bytes(manifest: Manifest) -> bytes:
    """The bytes that are signed, and that `manifest.json` holds exactly."""
    try:
        return canonical_json(manifest.model_dump(mode="json"))
    except ValueError as exc:  # NaN/infinity (allow_nan=False) or a lone surrogate (UnicodeEncodeError)
        raise ManifestError(
            f"manifest cannot be written canonically: {exc}",
            hint="a manifest may not hold NaN, infinity or unpaired surrogates",
        ) from exc


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_manifest_bytes(data: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate manifest bytes (no signature or canonical-form check); raises ManifestError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ManifestError(
            f"{where} is not valid JSON: {exc}", hint="rebuild or re-download the bundle"
        ) from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} is not a JSON object", hint="rebuild or re-download the bundle")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            f"{where} does not fit the manifest schema: {_first_error(exc)}", hint=_schema_hint(exc)
        ) from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first.get("loc", ())) or "<root>"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}"


def _schema_hint(exc: ValidationError) -> str:
    kinds = {error.get("type") for error in exc.errors()}
    locs = {error.get("loc", ("",))[0] for error in exc.errors() if error.get("loc")}
    if "extra_forbidden" in kinds or "schema_version" in locs:
        return "it may come from a newer edgectl; upgrade the reader"
    return "rebuild the bundle with edgectl"


# --------------------------------------------------------------------------- signatures


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> bytes:
    """The content of `manifest.sig`: base64 of the Ed25519 signature over the canonical bytes, then a newline."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"sign_manifest needs an Ed25519 private key, got {type(private_key).__name__}")
    signature = private_key.sign(canonical_manifest_bytes(manifest))
    return base64.b64encode(signature) + b"\n"


def _decode_signature_file(signature_file_bytes: bytes) -> bytes:
    bad = SignatureError(
        f"{SIGNATURE_NAME} is malformed: expected base64 of a {SIGNATURE_BYTES}-byte Ed25519 signature and a newline",
        hint="rebuild or re-download the bundle",
    )
    body = signature_file_bytes[:-1] if signature_file_bytes.endswith(b"\n") else None
    if body is None:
        raise bad
    try:
        signature = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    # One signature, one byte form: padding bits and the newline are checked too.
    if len(signature) != SIGNATURE_BYTES or base64.b64encode(signature) + b"\n" != signature_file_bytes:
        raise bad
    return signature


def verify_and_parse(
    manifest_bytes: bytes, signature_file_bytes: bytes, public_key: Ed25519PublicKey
) -> Manifest:
    """Check the signature and the canonical form, and return the parsed manifest.

    The signature is checked over the bytes of the file before they are parsed;
    since the file must equal the canonical form of what it parses to, that is
    the same as checking it over the canonical form of the parsed manifest.
    """
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError(f"verification needs an Ed25519 public key, got {type(public_key).__name__}")
    signature = _decode_signature_file(signature_file_bytes)
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        expected = key_id(public_key)
        claimed = _peek_key_id(manifest_bytes)
        if claimed is not None and claimed != expected:
            raise SignatureError(
                f"signature does not verify: the manifest names key {claimed}, but the public key given is "
                f"{expected}",
                hint="pass the public key that matches the signing key",
            ) from None
        raise SignatureError(
            "signature does not verify: manifest.json or manifest.sig was changed after signing",
            hint="rebuild or re-download the bundle, and check you use the right public key",
        ) from None
    manifest = parse_manifest_bytes(manifest_bytes)
    # The bytes as signed must be canonical JSON. Compared with the canonical form of the bytes
    # themselves, not of the re-dumped model: a manifest written before an optional field was added
    # to the schema stays valid (the model would dump that field as null and differ).
    if canonical_json(json.loads(manifest_bytes)) != manifest_bytes:
        raise SignatureError(
            "manifest.json is not in canonical form (sorted keys, no whitespace, UTF-8)",
            hint="bundles must be written by edgectl; do not edit or re-format manifest.json",
        )
    if manifest.key_id is not None and manifest.key_id != key_id(public_key):
        raise SignatureError(
            f"manifest names key {manifest.key_id}, but it verifies with key {key_id(public_key)}",
            hint="the bundle was signed inconsistently; rebuild it",
        )
    return manifest


def verify_manifest_signature(
    manifest_bytes: bytes, signature_file_bytes: bytes, public_key: Ed25519PublicKey
) -> None:
    """Raise SignatureError unless `signature_file_bytes` signs `manifest_bytes`, which must be canonical.

    Raises ManifestError if the signed bytes do not parse as a manifest.
    """
    verify_and_parse(manifest_bytes, signature_file_bytes, public_key)


def _peek_key_id(manifest_bytes: bytes) -> str | None:
    """Best effort, for the error message only: the key id an (unverified) manifest claims."""
    try:
        value = json.loads(manifest_bytes.decode("utf-8")).get("key_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value) else None
