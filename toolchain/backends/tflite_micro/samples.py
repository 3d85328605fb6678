"""The microcontroller reference model: the demo's digits CNN at the scans' native 8x8, with few channels.

scikit-learn's 1,797 handwritten digits are 8x8 scans, so at that size no
pixel is invented; three conv stages of 8, 16 and 32 channels keep about
19 KB of int8 weights, small enough for a Cortex-M4 with 64 KB of RAM. The
same network at 32x32 and 32/64/128 channels is the demo model
(`toolchain.demo`), which the smallest board cannot hold: the pair shows a
fit and a fit report.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.demo import SCAN_SIZE, DemoData, train_digits_model

REFERENCE_WIDTHS = (8, 16, 32)
REFERENCE_SHAPE = [1, 1, SCAN_SIZE, SCAN_SIZE]


def train_micro_reference(out: Path, *, epochs: int = 12, seed: int = 0, progress=None) -> DemoData:
    """Train the reference CNN; model, calibration and validation folders under `out`, as for the demo."""
    return train_digits_model(
        out, epochs=epochs, seed=seed, progress=progress, image_size=SCAN_SIZE, widths=REFERENCE_WIDTHS
    )
