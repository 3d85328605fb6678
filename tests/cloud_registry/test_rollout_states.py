"""The rollout transition table (registry_api.schemas), read as a graph: every state is reachable, none is a trap."""

from __future__ import annotations

from registry_api.schemas import ACTIVE_ROLLOUT_STATES, ROLLOUT_TRANSITIONS, RolloutState, rollout_sources

STATES = {state.value for state in RolloutState}


def test_the_table_names_only_real_states():
    for (source, _action), target in ROLLOUT_TRANSITIONS.items():
        assert source in STATES and target in STATES


def test_every_state_is_reachable_from_running():
    seen, frontier = {"running"}, ["running"]
    while frontier:
        state = frontier.pop()
        for (source, _action), target in ROLLOUT_TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == STATES


def test_finished_rollouts_only_roll_back():
    """Completed and aborted rollouts can still be rolled back; halted and rolled-back ones are over."""
    for (source, action), _target in ROLLOUT_TRANSITIONS.items():
        if source not in ACTIVE_ROLLOUT_STATES:
            assert action == "rollback", (source, action)
    assert not [key for key in ROLLOUT_TRANSITIONS if key[0] in ("halted", "rolled_back")]


def test_sources_of_each_action():
    assert rollout_sources("pause") == ["running"]
    assert rollout_sources("resume") == ["paused"]
    assert rollout_sources("abort") == ["running", "paused"]
    assert rollout_sources("rollback") == ["running", "paused", "completed", "aborted"]
    assert rollout_sources("halt") == rollout_sources("complete") == ["running"]


def test_the_api_field_is_the_enum():
    from registry_api.schemas import RolloutInfo

    assert RolloutInfo.model_fields["state"].annotation is RolloutState
