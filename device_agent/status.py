"""What the running agent says about itself: the `/v1/status` document and the `/metrics` lines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

from device_agent import agent_version
from device_agent.state import SlotInfo
from edgewire import ModelRef, QueueStats

if TYPE_CHECKING:
    from device_agent.agent import Agent


class UpdateView(BaseModel):
    update_id: str
    state: str
    model: str
    from_version: int | None
    to_version: int
    reason: str | None
    slot: str
    entered_at: float


class AgentStatus(BaseModel):
    device: str
    fleet: str
    target: str
    agent_version: str
    uptime_s: float
    model: ModelRef | None
    runtime: dict[str, str]
    active_slot: str | None
    slots: dict[str, SlotInfo | None]
    update: UpdateView | None
    mqtt: dict[str, bool]
    queue: QueueStats


def status_of(agent: Agent) -> AgentStatus:
    """`GET /v1/status`: device, model, slots, the update's state, MQTT and the queue."""
    assert agent.updater is not None and agent.outbox is not None
    with agent.updater.lock:
        state = agent.state.model_copy(deep=True)
        pipeline = agent.pipeline
    record = state.update
    update = None
    if record is not None:
        update = UpdateView(
            update_id=record.update_id,
            state=record.state,
            model=record.desired.model,
            from_version=record.from_version,
            to_version=record.desired.version,
            reason=record.reason,
            slot=record.slot,
            entered_at=record.entered_at,
        )
    return AgentStatus(
        device=agent.identity.device,
        fleet=agent.identity.fleet,
        target=agent.config.device.target,
        agent_version=agent_version(),
        uptime_s=round(time.monotonic() - agent.started, 1),
        model=pipeline.model_ref if pipeline else None,
        runtime=pipeline.session.details if pipeline else {},
        active_slot=state.active,
        slots=dict(state.slots),
        update=update,
        mqtt={"configured": agent.link is not None, "connected": bool(agent.link and agent.link.connected)},
        queue=agent.outbox.stats(),
    )


def prometheus_lines(agent: Agent) -> list[str]:
    """`GET /metrics`: the inference counters, the queue, MQTT, the model served, the update state, memory."""
    assert agent.outbox is not None
    queue = agent.outbox.stats()
    pipeline = agent.pipeline
    lines = agent.metrics.prometheus()
    lines += [
        "# HELP edgectl_agent_queue_pending Messages waiting on disk for the broker.",
        "# TYPE edgectl_agent_queue_pending gauge",
        f"edgectl_agent_queue_pending {queue.pending}",
        "# HELP edgectl_agent_queue_dropped_total Messages dropped at the queue bound.",
        "# TYPE edgectl_agent_queue_dropped_total counter",
        f"edgectl_agent_queue_dropped_total {queue.dropped_total}",
        "# HELP edgectl_agent_mqtt_connected 1 while connected to the broker.",
        "# TYPE edgectl_agent_mqtt_connected gauge",
        f"edgectl_agent_mqtt_connected {int(bool(agent.link and agent.link.connected))}",
        "# HELP edgectl_agent_model_info The model served (value 1).",
        "# TYPE edgectl_agent_model_info gauge",
    ]
    if pipeline is not None:
        ref = pipeline.model_ref
        lines.append(
            f'edgectl_agent_model_info{{name="{ref.name}",version="{ref.version}",slot="{ref.slot}"}} 1'
        )
    update_state = agent.updater.current_state if agent.updater else "IDLE"
    lines += [
        "# HELP edgectl_agent_update_state The update machine's state (value 1).",
        "# TYPE edgectl_agent_update_state gauge",
        f'edgectl_agent_update_state{{state="{update_state}"}} 1',
    ]
    if agent.probe is not None:
        lines += [
            "# HELP edgectl_agent_resident_memory_bytes Resident memory of the agent process.",
            "# TYPE edgectl_agent_resident_memory_bytes gauge",
            f"edgectl_agent_resident_memory_bytes {int(agent.probe.rss_mb() * 2**20)}",
        ]
    return lines
