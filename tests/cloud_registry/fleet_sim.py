"""A simulated fleet for rollout tests: devices enrolled over the API, their messages fed through ingest.

The messages are real edgewire payloads on their real topics, parsed and written
by the registry's IngestWriter (what the MQTT subscriber calls); the broker
itself is exercised in test_mqtt.py and the end-to-end test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgewire.messages import dump_payload
from edgewire.topics import Topics
from tests.cloud_registry.helpers import telemetry, update_status


@dataclass
class SimDevice:
    name: str
    token: str
    version: int | None = None
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


@dataclass
class SimFleet:
    api: object
    devices: dict[str, SimDevice] = field(default_factory=dict)

    def enroll(self, count: int, prefix: str = "dev", target: str = "cpu", **kw) -> list[SimDevice]:
        made = []
        for i in range(count):
            name = f"{prefix}-{i:03d}"
            enrolled = self.api.enroll(name, target, **kw)
            self.devices[name] = SimDevice(name, enrolled["device_token"])
            made.append(self.devices[name])
        return made

    def feed(self, *messages) -> None:  # type: ignore[no-untyped-def]
        from cloud_registry.ingest import Incoming, IngestWriter

        writer = IngestWriter(self.api.registry.factory)
        writer.write(
            [Incoming(Topics(m.fleet, m.device).data(m.kind), dump_payload(m), 0, 1) for m in messages]
        )
        assert writer.stats.errors == 0

    def report_running(self, version: int, names=None, **kw) -> None:  # type: ignore[no-untyped-def]
        """Telemetry from each device serving `version` (and the devices now run it)."""
        messages = []
        for name in names or self.devices:
            device = self.devices[name]
            device.version = version
            messages.append(telemetry(name, device.next_seq(), version=version, **kw))
        self.feed(*messages)

    def desired(self, name: str) -> dict | None:
        auth = {"Authorization": f"Bearer {self.devices[name].token}"}
        return self.api.client.get("/v1/device/desired", headers=auth).json()["desired"]

    def apply_desired(self, state: str = "SUCCEEDED", names=None) -> list[str]:  # type: ignore[no-untyped-def]
        """Every device whose desired version differs from what it runs reports `state` for it."""
        acted, messages = [], []
        for name in names or self.devices:
            device, desired = self.devices[name], self.desired(name)
            if desired is None or desired["version"] == device.version:
                continue
            messages.append(
                update_status(
                    name,
                    device.next_seq(),
                    update_id=desired["update_id"],
                    state=state,
                    to_version=desired["version"],
                    from_version=device.version,
                    rollout_id=desired["rollout_id"],
                )
            )
            if state == "SUCCEEDED":
                device.version = desired["version"]
            acted.append(name)
        self.feed(*messages)
        return acted
