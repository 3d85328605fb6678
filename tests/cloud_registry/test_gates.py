"""Gate arithmetic and its boundaries: error-type gates fire strictly above, success thresholds at or above."""

from __future__ import annotations

import pytest

from cloud_registry import gates
from registry_api.schemas import GatePolicy, RolloutCreate, exponential_waves, wave_sizes


def test_error_type_gates_do_not_fire_at_the_threshold():
    assert not gates.exceeds(0.25, 0.25)
    assert gates.exceeds(0.25 + 1e-12, 0.25)
    assert not gates.exceeds(None, 0.0)
    assert not gates.exceeds(0.0, 0.0) and gates.exceeds(1e-9, 0.0)


def test_success_threshold_is_met_at_the_threshold():
    assert gates.meets(0.5, 0.5)
    assert not gates.meets(0.5 - 1e-12, 0.5)
    assert gates.meets(1.0, 1.0)


def test_crossed_gates_at_and_above_every_threshold():
    policy = GatePolicy(
        max_failure_rate=0.5, max_error_rate_increase=0.25, max_p95_regression=0.5, max_confidence_psi=0.25
    )
    at = {"failure_rate": 0.5, "error_rate_increase": 0.25, "p95_regression": 0.5, "confidence_psi": 0.25}
    assert gates.crossed_gates(at, policy) == []
    for name in gates.GATES:
        above = {**at, name: at[name] + 1e-9}
        assert gates.crossed_gates(above, policy) == [name]
    assert gates.crossed_gates({name: None for name in gates.GATES}, policy) == []


def test_window_values_from_telemetry():
    before, after = gates.Window(), gates.Window()
    before.add(100, 0, 10.0, [0] * 9 + [100])
    before.add(300, 3, 20.0, [0] * 9 + [300])
    after.add(200, 4, 25.0, [0] * 5 + [200] + [0] * 4)
    assert before.error_rate == pytest.approx(0.0075) and before.p95_ms == pytest.approx(17.5)
    values = gates.telemetry_values(before, after, min_inferences=0)
    assert values["error_rate_increase"] == pytest.approx(0.02 - 0.0075)
    assert values["p95_regression"] == pytest.approx(25 / 17.5 - 1)
    assert values["confidence_psi"] > 5  # all the mass moved from the top bin to the middle
    # Too few inferences on either side: no value, so nothing can fire on noise.
    assert gates.telemetry_values(before, after, min_inferences=201) == {
        "error_rate_increase": None,
        "p95_regression": None,
        "confidence_psi": None,
    }


def test_identical_histograms_have_no_shift():
    window = gates.Window()
    window.add(100, 0, 5.0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 55])
    assert gates.telemetry_values(window, window, 0)["confidence_psi"] == pytest.approx(0.0)


def test_wave_sizes_and_plans():
    assert wave_sizes([1, 10, 50, 100], 100) == [1, 9, 40, 50]
    assert wave_sizes([1, 10, 50, 100], 4) == [1, 0, 1, 2]
    assert wave_sizes([1, 10, 50, 100], 1) == [1, 0, 0, 0]
    assert exponential_waves(1, 4) == [1, 4, 16, 64, 100]
    assert RolloutCreate(
        model="m", version=1, exponential={"first_percent": 10, "factor": 3}
    ).wave_percents() == [
        10,
        30,
        90,
        100,
    ]
    for bad in ([50, 10, 100], [10, 50], [0, 100], [10, 10, 100]):
        with pytest.raises(ValueError):
            RolloutCreate(model="m", version=1, waves=bad)
    with pytest.raises(ValueError):
        RolloutCreate(model="m", version=1, alias="production")
