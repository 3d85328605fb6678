"""The fleet wire contract: MQTT topics and payloads, and the device-facing HTTP API of the registry.

The device agent and the cloud registry both import this package and nothing
of each other, so the contract is written once. Like `edgebundle`, it imports
only pydantic, cryptography and the stdlib at import time (numpy is imported
inside the drift functions that need it), so an agent on a small device and a
registry replica load it cheaply. docs/wire.md describes the same contract for
people.
"""

from edgewire.commands import RollbackOrder, sign_rollback, verify_rollback
from edgewire.device_api import (
    API_PREFIX,
    DesiredResponse,
    DeviceConfig,
    EnrollRequest,
    EnrollResponse,
    MqttSettings,
    Paths,
    Sample,
    SampleUpload,
    SampleUploadResult,
    SampleUploadSettings,
)
from edgewire.messages import (
    DesiredModel,
    DriftSummary,
    InferenceStats,
    ModelRef,
    Presence,
    QueueStats,
    SystemStats,
    Telemetry,
    UpdateStatus,
    new_message_id,
    parse_payload,
)
from edgewire.topics import Topics, parse_topic
from edgewire.update_states import UPDATE_STATES, UPDATE_TRANSITIONS, UpdateState

__all__ = [
    "API_PREFIX",
    "UPDATE_STATES",
    "UPDATE_TRANSITIONS",
    "DesiredModel",
    "DesiredResponse",
    "DeviceConfig",
    "DriftSummary",
    "EnrollRequest",
    "EnrollResponse",
    "InferenceStats",
    "ModelRef",
    "MqttSettings",
    "Paths",
    "Presence",
    "QueueStats",
    "RollbackOrder",
    "Sample",
    "SampleUpload",
    "SampleUploadResult",
    "SampleUploadSettings",
    "SystemStats",
    "Telemetry",
    "Topics",
    "UpdateState",
    "UpdateStatus",
    "new_message_id",
    "parse_payload",
    "parse_topic",
    "sign_rollback",
    "verify_rollback",
]
