"""parse_payload validates the raw bytes in one pass (pydantic's JSON parser), and accepts and refuses
exactly what json.loads + model_validate did, with the same errors."""

from __future__ import annotations

import json

import pytest

from edgewire.messages import PAYLOADS, InferenceStats, PayloadError, Telemetry, dump_payload, parse_payload


def _reference(kind: str, raw: bytes):  # type: ignore[no-untyped-def]
    """What parse_payload did before: the standard library's JSON, then pydantic on the Python objects."""
    try:
        return PAYLOADS[kind].model_validate(json.loads(raw))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return ("error", str(exc).splitlines()[0][:200])


def _base() -> dict:
    message = Telemetry(
        fleet="default",
        device="cam-1",
        msg_id="0" * 32,
        seq=7,
        sent_at=1000.0,
        interval_s=10.0,
        inference=InferenceStats(count=100, errors=1, latency_ms_p50=5.0, latency_ms_p95=10.0),
    )
    return json.loads(dump_payload(message))


def _with(path: str, value) -> bytes:  # type: ignore[no-untyped-def]
    data = _base()
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(data).encode()


GOOD = json.dumps(_base()).encode()
CASES = [
    GOOD,
    _with("seq", 10**20),  # beyond a column: the wire takes it, the registry's check refuses it later
    _with("seq", 1e20),
    _with("seq", 5.0),
    _with("seq", "5"),
    _with("seq", 5.5),
    _with("seq", True),
    _with("schema_version", 1.0),
    _with("schema_version", 2),
    _with("inference.count", -1),
    _with("inference.latency_ms_p50", "1.5"),
    _with("sent_at", None),
    _with("interval_s", 0),
    _with("device", "Not-An-Id"),
    _with("device", 5),
    _with("extra", 1),
    GOOD.replace(b'"latency_ms_p50": 5.0', b'"latency_ms_p50": NaN'),
    GOOD.replace(b'"latency_ms_p50": 5.0', b'"latency_ms_p50": -Infinity'),
    GOOD.replace(b'"latency_ms_p50": 5.0', b'"latency_ms_p50": 1e999'),
    b"\xef\xbb\xbf" + GOOD,  # a byte-order mark
    GOOD.decode().encode("utf-16"),
    GOOD.replace(b'"cam-1"', b'"cam-1", "device": "cam-2"'),  # a repeated key: the last one wins
    GOOD.replace(b'"default"', b'"def\\ud800ault"'),  # a lone surrogate
    GOOD.replace(b'"default"', b'"def\\u0000ault"'),
    GOOD.replace(b'"default"', b'"def\x01ault"'),  # a raw control character
    GOOD.replace(b'"default"', b'"def\xffault"'),  # not UTF-8
    GOOD + b" trailing",
    b" \n" + GOOD + b"\n",
    b"[1]",
    b"null",
    b"",
    b"{",
    b"{}",
    b'{"seq": ' + b"1" * 5000 + b"}",  # over Python's integer digit limit
]


@pytest.mark.parametrize("raw", CASES, ids=range(len(CASES)))
def test_the_same_messages_and_errors_as_json_loads_then_validate(raw):
    expected = _reference("telemetry", raw)
    if isinstance(expected, tuple):
        with pytest.raises(PayloadError) as caught:
            parse_payload("telemetry", raw)
        assert str(caught.value) == f"bad telemetry payload: {expected[1]}"
    else:
        assert parse_payload("telemetry", raw) == expected
        if raw.isascii():
            assert parse_payload("telemetry", raw.decode()) == expected  # str payloads too


def test_a_well_formed_payload_goes_through_one_parser(monkeypatch):
    """No json.loads (and no Python dict) on the way: only bad JSON falls back to the standard library."""
    import edgewire.messages

    invalid = _with("inference.count", -1)

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("json.loads called for a well-formed payload")

    monkeypatch.setattr(edgewire.messages.json, "loads", refuse)
    assert parse_payload("telemetry", GOOD).seq == 7
    with pytest.raises(PayloadError, match="bad telemetry payload: 1 validation error"):
        parse_payload("telemetry", invalid)
