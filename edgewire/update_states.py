"""The OTA update lifecycle as a contract: its states, what each one is, and the one table of moves.

An agent reports where an update stands (`UpdateStatus.state`); the registry's rollout gates,
metrics and dashboard read the same names. So the names, the facts about them and the moves between
them are written once, here. Adding a state is a member of `UpdateState`, its rows in
`UPDATE_TRANSITIONS` and, where it applies, membership of the sets below; a state in which the agent
works (not final) also needs its action in `device_agent.update.ACTIONS`, which
`tests/device_agent/test_state_machine.py` demands.

```
 (idle: IDLE or a final state) --desired--> QUEUED --accepted--> DOWNLOADING --downloaded--> VERIFYING
 VERIFYING --verified--> INSTALLING --installed--> HEALTHCHECK --healthy--> SUCCEEDED (the switch)
 QUEUED / VERIFYING --rejected--> REJECTED       HEALTHCHECK --unhealthy / crash_loop--> ROLLED_BACK
 DOWNLOADING / VERIFYING / INSTALLING --failed--> FAILED    (QUEUED..VERIFYING) --superseded--> FAILED
```

Values are the strings on the wire; the sets hold plain strings, so a database column compares
against them without knowing the enum.
"""

from __future__ import annotations

from enum import StrEnum


class UpdateState(StrEnum):
    """Where one update stands on one device. It moves only along `UPDATE_TRANSITIONS`."""

    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    INSTALLING = "INSTALLING"
    HEALTHCHECK = "HEALTHCHECK"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    REJECTED = "REJECTED"


S = UpdateState
UPDATE_STATES: tuple[str, ...] = tuple(state.value for state in UpdateState)
# An agent with no update on record: where the table starts. Never sent as an UpdateStatus.
IDLE = "IDLE"
# States after which an update is over, one way or the other.
FINAL_UPDATE_STATES: frozenset[str] = frozenset(
    {S.SUCCEEDED.value, S.FAILED.value, S.ROLLED_BACK.value, S.REJECTED.value}
)
# The final states that count against a version: the registry's rollout gates and metrics read these.
FAILED_UPDATE_STATES: tuple[str, ...] = (S.FAILED.value, S.ROLLED_BACK.value, S.REJECTED.value)
IDLE_STATES: frozenset[str] = frozenset({IDLE, *FINAL_UPDATE_STATES})
# States whose work can crash the agent (extraction, loading a model): restarts there are counted, and a
# crash loop ends the update.
RISKY_UPDATE_STATES: frozenset[str] = frozenset({S.VERIFYING.value, S.INSTALLING.value, S.HEALTHCHECK.value})
# States a newer desired version may cut short (nothing installed yet).
SUPERSEDABLE_UPDATE_STATES: frozenset[str] = frozenset(
    {S.QUEUED.value, S.DOWNLOADING.value, S.VERIFYING.value}
)

# (state, event) -> state: the whole lifecycle. Anything not in this table is a bug, and raises.
UPDATE_TRANSITIONS: dict[tuple[str, str], str] = {
    **{(idle, "desired"): S.QUEUED.value for idle in IDLE_STATES},
    **{(idle, "already_serving"): S.SUCCEEDED.value for idle in IDLE_STATES},
    ("QUEUED", "accepted"): "DOWNLOADING",
    ("QUEUED", "failed"): "FAILED",
    ("QUEUED", "rejected"): "REJECTED",
    ("QUEUED", "superseded"): "FAILED",
    ("DOWNLOADING", "downloaded"): "VERIFYING",
    ("DOWNLOADING", "failed"): "FAILED",
    ("DOWNLOADING", "superseded"): "FAILED",
    ("VERIFYING", "verified"): "INSTALLING",
    ("VERIFYING", "rejected"): "REJECTED",
    ("VERIFYING", "failed"): "FAILED",
    ("VERIFYING", "superseded"): "FAILED",
    ("VERIFYING", "crash_loop"): "FAILED",
    ("INSTALLING", "installed"): "HEALTHCHECK",
    ("INSTALLING", "failed"): "FAILED",
    ("INSTALLING", "crash_loop"): "FAILED",
    ("HEALTHCHECK", "healthy"): "SUCCEEDED",
    ("HEALTHCHECK", "unhealthy"): "ROLLED_BACK",
    ("HEALTHCHECK", "crash_loop"): "ROLLED_BACK",
}

_known = {*UPDATE_STATES, IDLE}
_unknown = {s for (source, _), target in UPDATE_TRANSITIONS.items() for s in (source, target)} - _known
if _unknown:  # a typo in the table fails at import, not on some device mid-update
    raise ValueError(f"UPDATE_TRANSITIONS names unknown states: {sorted(_unknown)}")
