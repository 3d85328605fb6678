"""The update lifecycle table itself: complete, consistent with the wire contract, and with no dead ends."""

from __future__ import annotations

import pytest

from device_agent.update import ACTIONS, Updater, next_state
from edgewire.update_states import FAILED_UPDATE_STATES, IDLE, UPDATE_STATES, UpdateState
from edgewire.update_states import FINAL_UPDATE_STATES as FINAL
from edgewire.update_states import RISKY_UPDATE_STATES as RISKY
from edgewire.update_states import UPDATE_TRANSITIONS as TRANSITIONS


def reachable(start: str) -> set[str]:
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def test_the_states_are_the_wire_states_plus_idle():
    states = {s for pair in TRANSITIONS for s in pair[:1]} | set(TRANSITIONS.values())
    assert states == {*UPDATE_STATES, IDLE}
    assert set(FAILED_UPDATE_STATES) < set(FINAL) < set(UPDATE_STATES)
    assert tuple(state.value for state in UpdateState) == UPDATE_STATES


def test_every_working_state_has_one_action_of_the_agent():
    """Adding a state to the contract's table without the agent's action for it fails here."""
    assert set(ACTIONS) == set(UPDATE_STATES) - set(FINAL)
    for method in ACTIONS.values():
        assert callable(getattr(Updater, method)), method


def test_an_update_status_carries_the_plain_wire_string():
    from edgewire import UpdateStatus

    status = UpdateStatus(
        fleet="f",
        device="d1",
        msg_id="0" * 32,
        seq=0,
        sent_at=0.0,
        update_id="u",
        model="m",
        to_version=1,
        state="FAILED",
    )
    assert type(status.state) is str and status.model_dump(mode="json")["state"] == "FAILED"
    with pytest.raises(ValueError):
        UpdateStatus.model_validate({**status.model_dump(), "state": "IDLE"})  # IDLE is never sent


def test_every_state_is_reachable_and_every_update_can_end():
    assert reachable(IDLE) == {*UPDATE_STATES, IDLE}
    for state in set(UPDATE_STATES) - set(FINAL):
        assert reachable(state) & set(FINAL), state
        exits = {event for (source, event) in TRANSITIONS if source == state}
        assert exits & {"failed", "unhealthy", "rejected"}, f"{state} has no way to fail"
    for state in RISKY:
        assert (state, "crash_loop") in TRANSITIONS, f"a crash loop in {state} must end the update"


def test_a_final_state_only_starts_a_new_update():
    for state in (IDLE, *FINAL):
        assert {event for (source, event) in TRANSITIONS if source == state} == {"desired", "already_serving"}
    assert TRANSITIONS[("HEALTHCHECK", "unhealthy")] == "ROLLED_BACK"
    assert TRANSITIONS[("HEALTHCHECK", "healthy")] == "SUCCEEDED"


def test_an_event_outside_the_table_is_a_bug():
    with pytest.raises(RuntimeError, match="no transition from SUCCEEDED on healthy"):
        next_state("SUCCEEDED", "healthy")
