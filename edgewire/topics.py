"""The MQTT topic layout: data up from devices and commands down to them, under separate prefixes.

```
edgectl/data/{fleet}/{device}/presence    retained  Presence       device -> cloud (also the Last Will)
edgectl/data/{fleet}/{device}/telemetry   QoS 1     Telemetry      device -> cloud
edgectl/data/{fleet}/{device}/update      retained  UpdateStatus   device -> cloud (the newest one)
edgectl/cmd/{fleet}/{device}/desired      retained  DesiredModel   cloud -> device
```

Why this shape:
- Data and commands live under separate prefixes, so the registry subscribes
  to one subtree (`edgectl/data/#`, or `$share/{group}/edgectl/data/#` when
  several registry replicas split the stream with MQTT 5 shared
  subscriptions) and a device subscribes to exactly its own command subtree
  (`edgectl/cmd/{fleet}/{device}/#`), never to a wildcard above it.
- Fleet and device ids are lowercase letters, digits and '-' (no '/', '+',
  '#'), so an id can never widen a subscription or an ACL pattern.
- The broker's ACL follows the same split: a device may write only under
  `edgectl/data/{fleet}/{its id}/` and read only under `edgectl/cmd/{fleet}/{its id}/`.
- QoS 1 at most: every payload carries a message id and the cloud drops
  duplicates, which keeps the design portable to brokers without QoS 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edgebase.ids import SLUG_PATTERN

ROOT = "edgectl"
DATA = "data"
COMMAND = "cmd"
DataKind = Literal["presence", "telemetry", "update"]
CommandKind = Literal["desired"]
DATA_KINDS: tuple[str, ...] = ("presence", "telemetry", "update")
COMMAND_KINDS: tuple[str, ...] = ("desired",)
# For pydantic's `pattern` (Rust's regex: `$` is the end of the text) and Python's `re`, where `$` also
# matches before a final newline ("dev\n" passed): `\Z` there.
ID_PATTERN = SLUG_PATTERN  # a fleet or device id is a slug (edgebase.ids)
ID_RE = re.compile(ID_PATTERN[:-1] + r"\Z")


def check_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a valid fleet or device id, else raise ValueError."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 lowercase letters, digits or '-', starting alphanumeric: {value!r}"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Every topic of one device."""

    fleet: str
    device: str

    def __post_init__(self) -> None:
        check_id(self.fleet, "fleet id")
        check_id(self.device, "device id")

    def data(self, kind: DataKind) -> str:
        if kind not in DATA_KINDS:
            raise ValueError(f"unknown data topic kind {kind!r}")
        return f"{ROOT}/{DATA}/{self.fleet}/{self.device}/{kind}"

    def command(self, kind: CommandKind) -> str:
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command topic kind {kind!r}")
        return f"{ROOT}/{COMMAND}/{self.fleet}/{self.device}/{kind}"

    @property
    def presence(self) -> str:
        return self.data("presence")

    @property
    def telemetry(self) -> str:
        return self.data("telemetry")

    @property
    def update(self) -> str:
        return self.data("update")

    @property
    def desired(self) -> str:
        return self.command("desired")

    @property
    def command_subscription(self) -> str:
        """The one filter a device subscribes to: its own command subtree."""
        return f"{ROOT}/{COMMAND}/{self.fleet}/{self.device}/#"


def data_subscription(share_group: str | None = None) -> str:
    """What the registry subscribes to; with a group, an MQTT 5 shared subscription split across replicas."""
    topic = f"{ROOT}/{DATA}/#"
    if share_group is None:
        return topic
    check_id(share_group, "share group")
    return f"$share/{share_group}/{topic}"


@dataclass(frozen=True)
class ParsedTopic:
    direction: Literal["data", "cmd"]
    fleet: str
    device: str
    kind: str


def parse_topic(topic: str) -> ParsedTopic | None:
    """Split a topic of this layout; None for anything else (foreign or malformed topics are ignored)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[1] not in (DATA, COMMAND):
        return None
    _, direction, fleet, device, kind = parts
    if not ID_RE.match(fleet) or not ID_RE.match(device):
        return None
    if kind not in (DATA_KINDS if direction == DATA else COMMAND_KINDS):
        return None
    return ParsedTopic(direction, fleet, device, kind)  # type: ignore[arg-type]
