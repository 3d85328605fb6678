"""The accuracy repair: sensitivity measure and the keep-in-float search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebundle.manifest import Fidelity, ValidationReport
from toolchain.repair import channel_error, rank_layers, search_keep_float


def test_channel_error_sees_a_wiped_out_channel_that_whole_tensor_error_hides():
    rng = np.random.default_rng(0)
    # a detector head: 4 box channels in pixels (0..640) and 3 class-score channels in 0..1
    reference = np.concatenate([rng.uniform(0, 640, (8, 4, 100)), rng.uniform(0, 1, (8, 3, 100))], axis=1)
    damaged = reference.copy()
    damaged[:, 4:] = 0.0  # one shared INT8 scale for both: the scores all round to zero
    whole_tensor = np.linalg.norm(damaged - reference) / np.linalg.norm(reference)
    assert whole_tensor < 0.01  # looks harmless as a whole...
    assert channel_error([reference], [damaged]) > 0.99  # ...but a whole channel is gone
    slightly = reference * 1.001
    assert channel_error([reference], [slightly]) < 0.002


def test_rank_layers_orders_by_measured_error():
    reference = [np.ones((4, 3, 5))]
    damage = {"conv1": 0.01, "concat": 0.9, "conv2": 0.1}

    def quantize_only(name: str) -> Path:
        return Path(name)

    def run(path: Path) -> list[np.ndarray]:
        out = np.ones((4, 3, 5))
        out[:, 0] *= 1 - damage[str(path)]
        return [out]

    ranked = rank_layers(list(damage), quantize_only, run, reference)
    assert [name for name, _ in ranked] == ["concat", "conv2", "conv1"]
    assert ranked[0][1] > ranked[1][1] > ranked[2][1]


def _report(passed: bool, value: float) -> ValidationReport:
    return ValidationReport(
        data="val",
        samples=10,
        task="classify",
        metric="top1",
        reference={"top1": 90.0},
        artifact={"top1": value},
        drop_points=90.0 - value,
        max_drop_points=1.0,
        fidelity=Fidelity(cosine=0.99, max_abs_error=0.1),
        passed=passed,
    )


def test_search_finds_the_smallest_passing_set():
    ranked = [f"layer{i}" for i in range(20)]
    needed = 5  # the budget holds once the five most sensitive layers stay float

    def quantize_keep_float(keep: list[str]) -> Path:
        return Path(str(len(keep)))

    def evaluate(path: Path) -> ValidationReport:
        k = int(path.name)
        return _report(k >= needed, 89.5 if k >= needed else 50.0)

    outcome = search_keep_float(ranked, quantize_keep_float, evaluate)
    assert outcome.kept_float == ranked[:needed]
    assert outcome.report.passed
    assert [a["kept_float"] for a in outcome.attempts] == [1, 2, 4, 8, 6, 5]


def test_search_gives_up_when_nothing_holds_the_budget():
    ranked = ["a", "b", "c"]
    outcome = search_keep_float(ranked, lambda keep: Path(str(len(keep))), lambda _p: _report(False, 10.0))
    assert outcome.path is None
    assert outcome.kept_float == ranked
    assert outcome.attempts[-1]["kept_float"] == 3
