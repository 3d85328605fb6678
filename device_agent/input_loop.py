"""Headless input: run every image (or .npy tensor) dropped into a folder, or the frames of a video file.

Each result is one JSON line appended to `results` (the same body as
POST /v1/infer, plus the source and, for videos, the frame index). Folder
files are moved into `<folder>/done` (or deleted) once processed, so a
restart does not run them twice; with `after: keep` they are remembered for
the life of the process only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.errors import AgentError, InferenceInputError
from device_agent.pipeline import InferenceFailed

if TYPE_CHECKING:
    from device_agent.config import InputLoopConfig
    from device_agent.pipeline import InferenceResult, Pipeline

log = logging.getLogger(__name__)


def check_input_config(config: InputLoopConfig) -> None:
    """Fail at start-up, not later, on a folder that is not there or a video without OpenCV."""
    import importlib.util

    if config.folder is not None and not config.folder.is_dir():
        raise AgentError(f"input.folder {config.folder} is not a folder", hint="create it, or fix the path")
    if config.video is not None:
        if not config.video.is_file():
            raise AgentError(f"input.video {config.video} does not exist", hint="fix the path")
        if importlib.util.find_spec("cv2") is None:
            raise AgentError(
                "input.video needs OpenCV to decode video, which is not installed",
                hint="pip install opencv-python-headless",
            )


class InputLoop:
    def __init__(
        self, config: InputLoopConfig, pipeline: Callable[[], Pipeline | None], stop: threading.Event
    ) -> None:
        self.config = config
        self._pipeline = pipeline
        self._stop = stop
        self._seen: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="input-loop", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _write(self, source: str, result: InferenceResult, frame: int | None = None) -> None:
        line = {"source": source, "at": time.time(), **result.to_json(include_outputs=False)}
        if frame is not None:
            line["frame"] = frame
        self.config.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.config.results, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _wait_for_model(self) -> Pipeline | None:
        while not self._stop.is_set():
            pipeline = self._pipeline()
            if pipeline is not None:
                return pipeline
            self._stop.wait(self.config.poll_s)
        return None

    def _run(self) -> None:
        try:
            if self.config.folder is not None:
                self._folder(self.config.folder)
            else:
                self._video(self.config.video)  # type: ignore[arg-type]
        except Exception:
            log.exception("the input loop stopped")

    def _pending(self, folder: Path) -> list[Path]:
        files = {p for pattern in self.config.patterns for p in folder.glob(pattern) if p.is_file()}
        return sorted(p for p in files if p.name not in self._seen)

    def _folder(self, folder: Path) -> None:
        while not self._stop.is_set():
            for path in self._pending(folder):
                pipeline = self._wait_for_model()
                if pipeline is None:
                    return
                try:
                    data = path.read_bytes()
                    if path.suffix.lower() == ".npy":
                        result = pipeline.infer_tensors(data)
                    else:
                        result = pipeline.infer_image(data)
                    self._write(path.name, result)
                except (InferenceInputError, InferenceFailed, OSError) as exc:
                    log.warning("input %s: %s", path.name, exc)
                self._done(folder, path)
            self._stop.wait(self.config.poll_s)

    def _done(self, folder: Path, path: Path) -> None:
        if self.config.after == "delete":
            path.unlink(missing_ok=True)
        elif self.config.after == "move":
            done = folder / "done"
            done.mkdir(exist_ok=True)
            path.replace(done / path.name)
        else:
            self._seen.add(path.name)

    def _video(self, video: Path) -> None:
        import cv2

        capture = cv2.VideoCapture(str(video))
        frame_index = -1
        try:
            while not self._stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    log.info("input video %s ended after %d frames", video.name, frame_index + 1)
                    return
                frame_index += 1
                if frame_index % self.config.every_n_frames:
                    continue
                pipeline = self._wait_for_model()
                if pipeline is None:
                    return
                from PIL import Image

                try:
                    image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    self._write(video.name, pipeline.infer_image(image), frame_index)
                except (InferenceInputError, InferenceFailed) as exc:
                    log.warning("input %s frame %d: %s", video.name, frame_index, exc)
        finally:
            capture.release()
