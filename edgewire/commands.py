"""Signed commands from the cloud: today one, the rollback order.

A device refuses a bundle older than the one it serves (a replayed old bundle
is still validly signed). When the registry really wants a device back on an
older version (a rollout halted by its health gates, a manual rollback), it
sends a `RollbackOrder` inside the desired-model message: an Ed25519 signature,
by a key the device pins for commands, over the canonical JSON of the order.
The order names the device, the model and the exact version, and expires, so
it cannot be replayed to another device, model or version, or months later.
"""

from __future__ import annotations

import base64
import binascii
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from edgebundle.signing import canonical_json, key_id

DEFAULT_ROLLBACK_TTL_S = 7 * 24 * 3600


class RollbackOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: str
    model: str
    version: int = Field(ge=1, description="The older version the device may go back to.")
    reason: str = Field(max_length=500)
    issued_at: float
    expires_at: float
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(
        default="", description="base64 Ed25519 over the canonical JSON of the other fields."
    )

    def signed_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))


class RollbackRefused(ValueError):
    """A rollback order that this device must not obey; the message says why."""


def sign_rollback(
    private_key: Ed25519PrivateKey,
    *,
    device: str,
    model: str,
    version: int,
    reason: str,
    ttl_s: float = DEFAULT_ROLLBACK_TTL_S,
    now: float | None = None,
) -> RollbackOrder:
    issued = time.time() if now is None else now
    order = RollbackOrder(
        device=device,
        model=model,
        version=version,
        reason=reason[:500],
        issued_at=issued,
        expires_at=issued + ttl_s,
        key_id=key_id(private_key),
    )
    signature = base64.b64encode(private_key.sign(order.signed_bytes())).decode()
    return order.model_copy(update={"signature": signature})


def verify_rollback(
    order: RollbackOrder,
    pinned: list[Ed25519PublicKey],
    *,
    device: str,
    model: str,
    version: int,
    now: float | None = None,
) -> None:
    """Raise RollbackRefused unless `order` is signed by a pinned key and is for exactly this downgrade."""
    keys = {key_id(k): k for k in pinned}
    key = keys.get(order.key_id)
    if key is None:
        raise RollbackRefused(f"rollback order signed by key {order.key_id}, which this device does not pin")
    try:
        key.verify(base64.b64decode(order.signature, validate=True), order.signed_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        raise RollbackRefused("rollback order signature does not verify") from None
    if (order.device, order.model, order.version) != (device, model, version):
        raise RollbackRefused(
            f"rollback order is for {order.device}/{order.model} v{order.version}, "
            f"not {device}/{model} v{version}"
        )
    current = time.time() if now is None else now
    if not order.issued_at - 300 <= current <= order.expires_at:
        raise RollbackRefused("rollback order has expired (or is from the future)")
