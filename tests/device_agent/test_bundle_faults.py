"""Bundles that must never be installed: each is refused and reported, and the old model keeps serving.

One agent process takes every faulty bundle in turn (fast); after each, it
still serves v1 exactly, and nothing of the refused bundle is left in its slots.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.device_agent.bundles import Built, classifier_bundle
from tests.device_agent.harness import write_agent
from tests.device_agent.test_updates import serves, update_to

CAP = 300_000  # this device's archive cap (max_archive_bytes)
UNPACKED_CAP = 1_000_000


def repack(built: Built, out: Path, edit: Callable[[Path], None] | None = None, extra_members=()) -> Built:
    """The same bundle archived again after `edit` changed its folder; `extra_members` are raw (name, bytes)."""
    work = out / "unpacked"
    with tarfile.open(built.archive) as tar:
        tar.extractall(work, filter="data")
    (top,) = list(work.iterdir())
    if edit is not None:
        edit(top)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(top, arcname=top.name)
        for name, data in extra_members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = out / "repacked.edgebundle"
    archive.write_bytes(buffer.getvalue())
    return dataclasses.replace(built, archive=archive)


def flip(path: Path, position: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def break_signature(folder: Path) -> None:
    sig = bytearray((folder / "manifest.sig").read_bytes())
    sig[10] = ord("B") if sig[10] != ord("B") else ord("C")  # still base64, no longer the signature
    (folder / "manifest.sig").write_bytes(bytes(sig))


@pytest.fixture
def device(tmp_path, signing, registry, agents):
    setup = write_agent(
        tmp_path / "agent",
        [signing.public_path],
        registry=registry,
        update={"max_archive_bytes": CAP, "max_unpacked_bytes": UNPACKED_CAP, "download_attempts": 2},
    )
    agent = agents(setup)
    v1 = classifier_bundle(tmp_path, signing.private, 1)
    assert update_to(agent, registry, v1)["state"] == "SUCCEEDED"
    return agent


def test_faulty_bundles_are_refused_reported_and_never_installed(
    tmp_path, signing, stranger, registry, device
):
    v2 = classifier_bundle(tmp_path, signing.private, 2)
    cases: list[tuple[str, Built, dict, str, str]] = [
        ("bad signature", repack(v2, tmp_path / "sig", break_signature), {}, "REJECTED", "signature"),
        (
            "unknown key",
            classifier_bundle(tmp_path / "k", stranger.private, 2),
            {},
            "REJECTED",
            "does not pin",
        ),
        (
            "missing file",
            repack(v2, tmp_path / "miss", lambda f: (f / "sample_outputs.npz").unlink()),
            {},
            "REJECTED",
            "missing",
        ),
        (
            "extra file",
            repack(v2, tmp_path / "extra", lambda f: (f / "notes.txt").write_text("hi")),
            {},
            "REJECTED",
            "not listed",
        ),
        (
            "path traversal",
            repack(v2, tmp_path / "dots", extra_members=[("tiny-v2-cpu/../escaped.txt", b"gotcha")]),
            {},
            "REJECTED",
            "unsafe path",
        ),
        (
            "wrong target (message)",
            classifier_bundle(tmp_path / "t1", signing.private, 2, target="rpi5"),
            {},
            "REJECTED",
            "target",
        ),
        (
            "wrong target (bundle)",
            classifier_bundle(tmp_path / "t2", signing.private, 2, target="rpi5"),
            {"target": "cpu"},
            "REJECTED",
            "bundle is for target rpi5",
        ),
        (
            "oversized archive",
            classifier_bundle(
                tmp_path / "big",
                signing.private,
                2,
                extra_files={"pad.bin": np.random.default_rng(1).bytes(CAP)},
            ),
            {},
            "REJECTED",
            "cap",
        ),
        (
            "archive unpacking past the cap",
            classifier_bundle(
                tmp_path / "bomb", signing.private, 2, extra_files={"zeros.bin": bytes(2 * UNPACKED_CAP)}
            ),
            {},
            "REJECTED",
            "more than",
        ),
        (
            "archive larger than announced",
            v2,
            {"archive_size": v2.size - 100},
            "FAILED",
            "the desired archive has",
        ),
        ("name and version not what was announced", v2, {"version": 5}, "REJECTED", "holds tiny v2"),
    ]
    for filename in ("model.onnx", "sample_input.npy", "sample_outputs.npz", "manifest.json"):
        cases.append(
            (
                f"flipped byte in {filename}",
                repack(v2, tmp_path / f"flip-{filename}", lambda f, n=filename: flip(f / n)),
                {},
                "REJECTED",
                "",
            )
        )

    slots = device.setup.data_dir / "slots"
    for what, bundle, fields, final, words in cases:
        update = update_to(device, registry, bundle, **fields)
        assert update["state"] == final, (what, update)
        assert words in update["reason"], (what, update["reason"])
        assert registry.update_states(update["update_id"])[-1] == final, what
        assert serves(device, 1), what
        status = device.status()
        assert status["active_slot"] == "a" and status["slots"]["b"] is None, (what, status["slots"])
        assert not (slots / "b").exists() and not (slots / "incoming").exists(), what
        assert not (device.setup.root / "escaped.txt").exists() and not (slots / "escaped.txt").exists()

    # An older version without a signed rollback order (a replayed, validly signed bundle).
    assert update_to(device, registry, v2)["state"] == "SUCCEEDED"
    replay = update_to(device, registry, classifier_bundle(tmp_path / "old", signing.private, 1))
    assert replay["state"] == "REJECTED" and "older" in replay["reason"]
    assert serves(device, 2)
