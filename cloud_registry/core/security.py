"""Secrets: API and device tokens (random, stored as sha256), roles, and Mosquitto's password hashes.

Tokens are 32 random bytes, so a plain sha256 is enough to store them (nothing
to brute-force); the database never holds a token, only its hash. MQTT
passwords are stored the way Mosquitto reads them (PBKDF2-SHA512, `$7$`), so
the registry can write the broker's password file without keeping them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ROLES = ("read-only", "deployer", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}

# mosquitto_passwd (2.0): `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`, 12-byte salt.
MOSQUITTO_HASH_ID = 7
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
MOSQUITTO_HASH_BYTES = 64


def new_token(prefix: str) -> str:
    """A fresh secret; the prefix says what it is for when someone finds one in a config file."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    return _RANK.get(role, -1) >= _RANK[needed]


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """The password-file hash Mosquitto 2 writes and checks (its `$7$` PBKDF2-SHA512 format)."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, MOSQUITTO_HASH_BYTES)
    return f"${MOSQUITTO_HASH_ID}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(password: str, encoded: str) -> bool:
    """Check a password against a `$7$` hash (as Mosquitto does), in constant time."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != str(MOSQUITTO_HASH_ID):
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)
