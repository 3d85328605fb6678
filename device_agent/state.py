"""What the agent keeps on disk about its models and its update: one JSON file, replaced atomically.

`state.json` names the active slot (the model served, known good), what each
A/B slot holds, the highest version installed per model (for monotonicity)
and the current or last update with its state. One file, so one atomic
rename moves everything at once: the switch to a new model, its commit and
the update's SUCCEEDED are the same write.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgebase.durable import atomic_write_json
from edgewire import DesiredModel

log = logging.getLogger(__name__)
Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
STATE_SCHEMA = 1


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent keeps its files: state.json, the A/B slots, downloads, the outbox, engines, its lock."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def staging(self) -> Path:
        return self.slots / "incoming"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.sqlite"

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    @property
    def lock(self) -> Path:
        return self.root / "agent.lock"

    def slot(self, slot: str) -> Path:
        return self.slots / slot

    def create(self) -> None:
        for folder in (self.root, self.slots, self.downloads, self.engines):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlotInfo(_State):
    name: str
    version: int
    target: str
    runtime: str
    archive_sha256: str
    key_id: str | None
    installed_at: float


class UpdateRecord(_State):
    update_id: str
    desired: DesiredModel
    state: str
    slot: Slot
    from_model: str | None = None
    from_version: int | None = None
    reason: str | None = None
    resumes: int = Field(default=0, description="Agent restarts seen in the current state.")
    entered_at: float = Field(default_factory=time.time)
    reported: bool = Field(default=False, description="Whether this state's UpdateStatus is queued.")
    local_source: str | None = Field(default=None, description="Archive path of an `edgectl-agent install`.")

    @property
    def report(self) -> bool:
        """Local installs are not the registry's updates: they are not reported."""
        return self.local_source is None


class AgentState(_State):
    schema_version: Literal[1] = STATE_SCHEMA
    active: Slot | None = None
    previous: Slot | None = Field(default=None, description="The slot served before the last commit.")
    slots: dict[Slot, SlotInfo | None] = Field(default_factory=lambda: {"a": None, "b": None})
    max_versions: dict[str, int] = Field(default_factory=dict)
    update: UpdateRecord | None = None

    def serving_info(self) -> SlotInfo | None:
        return self.slots.get(self.active) if self.active else None


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError) as exc:
            return self._set_aside(f"unreadable ({exc})")
        try:
            return AgentState.model_validate(data)
        except ValidationError as exc:
            return self._set_aside(f"invalid ({str(exc).splitlines()[0]})")

    def _set_aside(self, why: str) -> AgentState:
        # Atomic writes make this a disk fault, not a crash artefact; keep the file for a person to read.
        aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
        self.path.replace(aside)
        log.error("state file %s was %s; moved it to %s and starting without a model", self.path, why, aside)
        return AgentState()

    def save(self, state: AgentState) -> None:
        atomic_write_json(self.path, state.model_dump(mode="json"))
