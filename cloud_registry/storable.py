"""Whether the database can hold a message as it came: checked before the message joins a batch.

The wire allows any integer and any text length; the columns do not, and PostgreSQL refuses NUL in
text. A message that does not fit is dropped alone (counted and logged by the ingest), so one device's
bad message never fails the batch of the others. The walk through every value runs only when the
payload's bytes hint at a problem: most messages cost two substring searches.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from edgewire.messages import Presence, Telemetry, UpdateStatus
from registry_api.schemas import INT32_MAX, INT64_MAX

INT32_MIN, INT64_MIN = -(2**31), -(2**63)
MODEL_NAME_MAX = 128  # the model-name columns (telemetry, update events, devices)


def _unstorable_value(value: object) -> str | None:
    """What no column (nor JSON column) of any database can hold, anywhere in a message."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "an integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "a number that is not finite"
    if isinstance(value, str):
        return "a NUL character" if "\x00" in value else None
    if isinstance(value, BaseModel):
        value = [getattr(value, name) for name in type(value).model_fields]
    elif isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        for item in value:
            problem = _unstorable_value(item)
            if problem:
                return problem
    return None


# In a payload without these, no integer has over 18 digits and no text holds NUL (JSON escapes control
# characters, and a raw one does not parse); the wire models refuse NaN and infinity themselves. (An
# integer written with an exponent, 1e20, only reaches the columns checked one by one above.) Looked for
# with two substring searches, every digit first made a 0: a regular expression took 9 us of the 15.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_ESCAPED_NUL = b"\\u0000"


def _suspect(payload: bytes) -> bool:
    return _ESCAPED_NUL in payload or _LONG_NUMBER in payload.translate(_DIGITS_AS_ZERO)


def _beyond_32_bits(*values: int | None) -> bool:
    for value in values:  # noqa: SIM110 (a loop: any() over a generator costs more, once per message)
        if value is not None and not INT32_MIN <= value <= INT32_MAX:
            return True
    return False


def unstorable(message: Presence | Telemetry | UpdateStatus, payload: bytes | None = None) -> str | None:
    """Why the database would refuse this message (a short reason without its content); None when it fits.

    The wire allows any integer and any text length; the columns do not, and PostgreSQL refuses NUL in
    text. Checked before a message joins a batch, so one message never fails the batch of others. With
    the `payload` it came in, the walk through every value runs only when the bytes hint at a problem.
    """
    model = message.model
    if isinstance(message, Telemetry):
        inference = message.inference
        small = _beyond_32_bits(inference.count, inference.errors, model.version if model else None)
        name = model.name if model else None
    elif isinstance(message, Presence):
        small = _beyond_32_bits(message.session, model.version if model else None)
        name = model.name if model else None
    else:
        small = _beyond_32_bits(message.from_version, message.to_version, message.rollout_id)
        name = model
    if small:
        return "a number beyond its 32-bit column"
    seq = getattr(message, "seq", None)
    if seq is not None and not INT64_MIN <= seq <= INT64_MAX:
        return "a number beyond its 64-bit column"
    if name is not None and len(name) > MODEL_NAME_MAX:
        return f"a model name over {MODEL_NAME_MAX} characters"
    if payload is not None and not _suspect(payload):
        return None
    return _unstorable_value(message)


def fits_columns(message: Presence | Telemetry | UpdateStatus) -> bool:
    """The wire allows any integer; the database columns do not. Out-of-range values are refused, not stored."""
    return unstorable(message) is None
