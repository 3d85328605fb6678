"""Keys, canonical manifests and signatures."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgebundle import (
    KeyFileError,
    Manifest,
    ManifestError,
    SignatureError,
    canonical_json,
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_and_parse,
    verify_manifest_signature,
)
from edgebundle.manifest import (
    Artifact,
    Fidelity,
    LayerRepair,
    Postprocessing,
    Preprocessing,
    SourceInfo,
    TensorSpec,
    ToolchainInfo,
    ValidationReport,
)


def make_manifest(**overrides) -> Manifest:
    """A small valid manifest with one artifact, model.onnx, and a few awkward values (unicode, floats)."""
    tensor_in = TensorSpec(name="input", shape=[1, 3, 8, 8], dtype="float32")
    tensor_out = TensorSpec(name="logits", shape=[1, 10], dtype="float32")
    fields = {
        "name": "digits",
        "version": 3,
        "created_at": "2026-01-02T03:04:05+00:00",
        "target": "cpu",
        "runtime": "onnxruntime",
        "precision": "fp32",
        "artifacts": [
            Artifact(
                path="model.onnx", format="onnx", precision="fp32", inputs=[tensor_in], outputs=[tensor_out]
            )
        ],
        "preprocessing": Preprocessing(resize=(8, 8), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        "postprocessing": Postprocessing(task="classify", labels=["zéro", "一", "two", "3"]),
        "source": SourceInfo(kind="onnx", filename="digits.onnx", sha256="ab" * 32),
        "toolchain": ToolchainInfo(edgectl="0.1.0", converter="onnxruntime", versions={"onnx": "1.23.0"}),
        "validation": ValidationReport(
            data="calib",
            samples=16,
            task="classify",
            max_drop_points=1.0,
            fidelity=Fidelity(cosine=0.9999, max_abs_error=1e-6),
            passed=True,
            repair=LayerRepair(
                layers_kept_float=["conv1"], candidates_ranked=4, attempts=[{"a": 1, "b": 0.5}]
            ),
        ),
    }
    fields.update(overrides)
    return Manifest(**fields)


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    return load_private_key(private_path), load_public_key(public_path)


# --------------------------------------------------------------------------- keys


def test_generate_keypair_writes_pem_files_with_private_mode_0600(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "new" / "keys")
    assert private_path == tmp_path / "new" / "keys" / "signing.key"
    assert public_path == tmp_path / "new" / "keys" / "signing.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(private_path), load_public_key(public_path)
    assert key_id(public) == key_id(private.public_key())


def test_generate_keypair_takes_a_name(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path, name="release")
    assert (private_path.name, public_path.name) == ("release.key", "release.pub")


def test_generate_keypair_never_overwrites(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    before = (private_path.read_bytes(), public_path.read_bytes())
    with pytest.raises(KeyFileError, match="already exists") as info:
        generate_keypair(tmp_path)
    assert str(private_path) in str(info.value)
    assert info.value.hint
    assert (private_path.read_bytes(), public_path.read_bytes()) == before


def test_generate_keypair_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "signing.pub").write_text("old")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path)
    assert not (tmp_path / "signing.key").exists()
    assert (tmp_path / "signing.pub").read_text() == "old"


def test_key_id_is_16_hex_of_sha256_of_raw_public_key(keypair) -> None:
    import hashlib

    _, public = keypair
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert len(key_id(public)) == 16


def _pem_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _assert_no_key_material(message: str, pem: bytes) -> None:
    for line in pem.decode().splitlines():
        if line and not line.startswith("-----"):
            assert line not in message


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
def test_load_missing_key_file(tmp_path: Path, loader) -> None:
    path = tmp_path / "nope.pem"
    with pytest.raises(KeyFileError) as info:
        loader(path)
    assert str(path) in str(info.value)
    assert "edgectl keys generate" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
@pytest.mark.parametrize("content", [b"", b"garbage\x00\xff", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END"])
def test_load_garbage_key_file(tmp_path: Path, loader, content: bytes) -> None:
    path = tmp_path / "garbage.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        loader(path)
    assert str(path) in str(info.value)


def test_load_folder_as_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="folder") as info:
        load_private_key(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        x25519.X25519PrivateKey.generate,
    ],
    ids=["rsa", "ec", "x25519"],
)
def test_load_other_key_types_is_refused(tmp_path: Path, make_key) -> None:
    key = make_key()
    private_path, public_path = tmp_path / "other.key", tmp_path / "other.pub"
    private_pem, public_pem = _pem_private(key), _pem_public(key.public_key())
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    with pytest.raises(KeyFileError, match="Ed25519") as info:
        load_private_key(private_path)
    assert str(private_path) in str(info.value)
    _assert_no_key_material(str(info.value), private_pem)
    with pytest.raises(KeyFileError, match="Ed25519") as info:
        load_public_key(public_path)
    assert str(public_path) in str(info.value)


def test_private_and_public_key_swapped(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    with pytest.raises(KeyFileError, match=r"\.key file") as info:
        load_private_key(public_path)
    assert str(public_path) in str(info.value)
    with pytest.raises(KeyFileError, match=r"\.pub file") as info:
        load_public_key(private_path)
    assert str(private_path) in str(info.value)
    _assert_no_key_material(str(info.value), private_path.read_bytes())


def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(KeyFileError, match="encrypted") as info:
        load_private_key(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path)
    private_path.chmod(0)
    with pytest.raises(KeyFileError, match="cannot read") as info:
        load_private_key(private_path)
    assert str(private_path) in str(info.value)


# --------------------------------------------------------------------------- canonical form


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", 1.5, None]}) == '{"a":["é",1.5,null],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_canonical_manifest_bytes_round_trip() -> None:
    manifest = make_manifest()
    data = canonical_manifest_bytes(manifest)
    assert Manifest.model_validate(json.loads(data)) == manifest
    assert canonical_manifest_bytes(Manifest.model_validate(json.loads(data))) == data


def test_nan_in_manifest_is_a_manifest_error() -> None:
    manifest = make_manifest()
    manifest.validation.fidelity.cosine = float("nan")
    with pytest.raises(ManifestError, match="NaN"):
        canonical_manifest_bytes(manifest)


# --------------------------------------------------------------------------- signatures


def test_sign_and_verify_round_trip(keypair) -> None:
    private, public = keypair
    manifest = make_manifest(key_id=key_id(public))
    signature = sign_manifest(manifest, private)
    assert signature.endswith(b"\n")
    assert len(base64.b64decode(signature.strip(), validate=True)) == 64
    data = canonical_manifest_bytes(manifest)
    verify_manifest_signature(data, signature, public)
    assert verify_and_parse(data, signature, public) == manifest


def test_verify_with_another_key_fails(keypair, tmp_path: Path) -> None:
    private, public = keypair
    manifest = make_manifest(key_id=key_id(public))
    signature = sign_manifest(manifest, private)
    other = load_public_key(generate_keypair(tmp_path / "other")[1])
    with pytest.raises(SignatureError, match=key_id(other)):
        verify_manifest_signature(canonical_manifest_bytes(manifest), signature, other)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 4},
        {"name": "digitz"},
        {"created_at": "2026-01-02T03:04:06+00:00"},
        {"postprocessing": Postprocessing(task="classify", labels=["zéro", "一", "two", "4"])},
    ],
)
def test_modified_manifest_fails(keypair, change) -> None:
    private, public = keypair
    manifest = make_manifest()
    signature = sign_manifest(manifest, private)
    changed = manifest.model_copy(update=change)
    with pytest.raises(SignatureError):
        verify_manifest_signature(canonical_manifest_bytes(changed), signature, public)


def test_non_canonical_manifest_file_fails_even_when_signed(keypair) -> None:
    private, public = keypair
    manifest = make_manifest()
    pretty = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    assert pretty != canonical_manifest_bytes(manifest)
    # Same content, signature over the canonical form: the bytes differ, so it fails.
    with pytest.raises(SignatureError):
        verify_manifest_signature(pretty, sign_manifest(manifest, private), public)
    # Even a signature over exactly these pretty bytes is refused: one manifest, one byte form.
    signed_pretty = base64.b64encode(private.sign(pretty)) + b"\n"
    with pytest.raises(SignatureError, match="canonical"):
        verify_manifest_signature(pretty, signed_pretty, public)


def test_manifest_signed_before_an_optional_field_existed_still_verifies(keypair) -> None:
    """Schema 1 grows optional fields; a bundle signed without them must keep verifying on newer code."""
    from edgebundle.signing import verify_and_parse

    private, public = keypair
    data = json.loads(canonical_manifest_bytes(make_manifest()))
    older = {k: v for k, v in data.items() if k not in ("tensorrt", "coreml", "memory_fit", "health")}
    older_bytes = canonical_json(older)
    manifest = verify_and_parse(older_bytes, base64.b64encode(private.sign(older_bytes)) + b"\n", public)
    assert manifest.tensorrt is None and manifest.name == data["name"]


def test_duplicate_keys_are_refused_even_when_signed(keypair) -> None:
    private, public = keypair
    data = canonical_manifest_bytes(make_manifest())
    smuggled = data[:-1] + b',"name":"evil"}'
    with pytest.raises(ManifestError, match="duplicate"):
        verify_manifest_signature(smuggled, base64.b64encode(private.sign(smuggled)) + b"\n", public)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: sig.rstrip(b"\n"),
        lambda sig: sig + b"\n",
        lambda sig: b" " + sig,
        lambda sig: sig.replace(b"\n", b"\r\n"),
        lambda sig: b"not base64!\n",
        lambda sig: base64.b64encode(b"\x00" * 63) + b"\n",
        lambda sig: b"",
    ],
)
def test_malformed_signature_file_fails(keypair, mangle) -> None:
    private, public = keypair
    manifest = make_manifest()
    with pytest.raises(SignatureError):
        verify_manifest_signature(
            canonical_manifest_bytes(manifest), mangle(sign_manifest(manifest, private)), public
        )


def test_signature_with_non_zero_padding_bits_is_refused(keypair) -> None:
    """64 bytes is 86 base64 digits with 2 unused bits: setting them decodes to the same signature."""
    private, public = keypair
    manifest = make_manifest()
    signature = sign_manifest(manifest, private)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[85]
    twin = signature[:85] + bytes([alphabet[alphabet.index(last) ^ 1]]) + signature[86:]
    assert base64.b64decode(twin.strip()) == base64.b64decode(signature.strip())
    with pytest.raises(SignatureError, match="malformed"):
        verify_manifest_signature(canonical_manifest_bytes(manifest), twin, public)


def test_key_id_mismatch_is_reported(keypair, tmp_path: Path) -> None:
    private, public = keypair
    manifest = make_manifest(key_id="0" * 16)
    with pytest.raises(SignatureError, match="0000000000000000"):
        verify_manifest_signature(
            canonical_manifest_bytes(manifest), sign_manifest(manifest, private), public
        )


# --------------------------------------------------------------------------- the light package


def test_import_edgebundle_pulls_no_numpy_or_torch() -> None:
    code = (
        "import sys, edgebundle, edgebundle.bundle, edgebundle.signing, edgebundle.manifest\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'torch', 'onnx', 'onnxruntime', 'tensorflow', 'toolchain', 'yaml'))\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
