"""Headless input: every image of a folder, or every n-th frame of a video, becomes one JSON line."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from device_agent.config import InputLoopConfig
from device_agent.errors import AgentError
from device_agent.input_loop import InputLoop, check_input_config
from device_agent.metrics import InferenceMetrics
from device_agent.pipeline import Pipeline
from device_agent.runtimes import SessionOptions
from tests.device_agent.bundles import classifier_bundle
from tests.device_agent.harness import wait_for


@pytest.fixture
def pipeline(tmp_path, signing):
    built = classifier_bundle(tmp_path, signing.private, 1)
    return Pipeline(built.folder, built.manifest, "a", SessionOptions(threads=1), InferenceMetrics())


def results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_loop(config: InputLoopConfig, pipeline, until) -> list[dict]:
    stop = threading.Event()
    loop = InputLoop(config, lambda: pipeline, stop)
    loop.start()
    try:
        wait_for(lambda: until(results(config.results)), "the input loop's results")
    finally:
        stop.set()
        loop.thread.join(10)
    return results(config.results)


def test_a_folder_of_images_and_tensors(tmp_path, pipeline):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(inbox / name)
    np.save(inbox / "c.npy", np.zeros((1, 3, 8, 8), np.float32))
    (inbox / "d.png").write_bytes(b"broken")
    (inbox / "notes.txt").write_text("not an input")
    config = InputLoopConfig(folder=inbox, results=tmp_path / "out" / "results.jsonl", poll_s=0.05)
    check_input_config(config)
    lines = run_loop(config, pipeline, lambda r: len(r) >= 3 and not (inbox / "d.png").exists())
    assert [line["source"] for line in lines] == ["a.png", "b.jpg", "c.npy"]
    assert all(line["model"]["version"] == 1 and len(line["predictions"]) == 1 for line in lines)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.png", "b.jpg", "c.npy", "d.png"]
    assert (inbox / "notes.txt").exists()


def test_every_nth_frame_of_a_video(tmp_path, pipeline):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
    for i in range(7):
        writer.write(np.full((16, 16, 3), i * 30, np.uint8))
    writer.release()
    config = InputLoopConfig(video=video, results=tmp_path / "frames.jsonl", every_n_frames=3)
    lines = run_loop(config, pipeline, lambda r: len(r) >= 3)
    assert [line["frame"] for line in lines] == [0, 3, 6]
    assert all(line["source"] == "clip.avi" for line in lines)


def test_a_missing_input_is_refused_at_start(tmp_path):
    with pytest.raises(AgentError, match="not a folder"):
        check_input_config(InputLoopConfig(folder=tmp_path / "nope", results=tmp_path / "r.jsonl"))
    with pytest.raises(AgentError, match="does not exist"):
        check_input_config(InputLoopConfig(video=tmp_path / "nope.mp4", results=tmp_path / "r.jsonl"))
