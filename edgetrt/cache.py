"""The engine cache: an engine is found, and loaded, only under exactly the key it was built for.

Key = (TensorRT version, GPU name, compute capability, plan hash). The plan
hash covers everything in the plan that changes the engine (precision, flags,
workspace, DLA core, shapes, optimization level) and the ONNX model's sha256;
it leaves out what does not (the trtexec line, engines built elsewhere).
Each entry is a folder `<key>/` holding `engine.plan` and `engine.json`, the
key's parts in full; a loader compares every part, so a copied or renamed
entry cannot smuggle an engine onto the wrong GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgebase.durable import atomic_write, fsync_dir, write_new
from edgebundle.manifest import TensorRTPlan
from edgebundle.signing import canonical_json

ENGINE_FILE = "engine.plan"
META_FILE = "engine.json"
# Plan fields that do not change the engine a builder produces.
_NOT_IN_HASH = {"trtexec", "engines", "tensorrt_versions"}


class EngineMismatch(Exception):
    """A cached engine whose recorded key differs from the one asked for: never loaded."""


def plan_hash(plan: TensorRTPlan, onnx_sha256: str) -> str:
    fields = plan.model_dump(mode="json", exclude=_NOT_IN_HASH)
    return hashlib.sha256(canonical_json({"plan": fields, "onnx_sha256": onnx_sha256})).hexdigest()


@dataclass(frozen=True)
class EngineKey:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plan_hash: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(asdict(self))).hexdigest()[:32]


def engine_key(
    tensorrt_version: str, gpu_name: str, compute_capability: str, plan: TensorRTPlan, onnx_sha256: str
) -> EngineKey:
    return EngineKey(tensorrt_version, gpu_name, compute_capability, plan_hash(plan, onnx_sha256))


class EngineCache:
    """Engines on disk, one folder per key; writes are atomic and durable (temp folder, fsync each file and the folder, rename, fsync the root)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, key: EngineKey) -> Path:
        return self.root / key.digest

    def load(self, key: EngineKey) -> bytes | None:
        """The engine built for exactly `key`, None if there is none; EngineMismatch if a wrong one is there."""
        folder = self.entry(key)
        meta_path, engine_path = folder / META_FILE, folder / ENGINE_FILE
        if not meta_path.is_file() or not engine_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise EngineMismatch(f"engine cache entry {folder.name} has unreadable metadata: {exc}") from exc
        recorded = {k: meta.get(k) for k in asdict(key)}
        if recorded != asdict(key):
            differ = ", ".join(
                f"{k}: built {recorded[k]!r}, here {v!r}" for k, v in asdict(key).items() if recorded[k] != v
            )
            raise EngineMismatch(
                f"engine cache entry {folder.name} was built for another device or plan ({differ})"
            )
        data = engine_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            raise EngineMismatch(f"engine cache entry {folder.name} does not match its recorded sha256")
        return data

    def store(
        self, key: EngineKey, engine: bytes, *, builder: str, timing_cache: bytes | None = None
    ) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry(key)
        work = Path(tempfile.mkdtemp(prefix=f".{key.digest}.", dir=self.root))
        try:
            write_new(work / ENGINE_FILE, engine)
            meta = {
                **asdict(key),
                "engine_sha256": hashlib.sha256(engine).hexdigest(),
                "builder": builder,
                "built_at": time.time(),
            }
            write_new(work / META_FILE, json.dumps(meta, indent=2).encode())
            fsync_dir(work)
            if final.exists():  # a stale or broken entry for the same key: replace it
                _remove_tree(final)
            os.replace(work, final)
            fsync_dir(self.root)  # the rename survives a power loss too
        except BaseException:
            _remove_tree(work)
            raise
        if timing_cache is not None:
            atomic_write(self.timing_cache_path(key), timing_cache)
        return final

    def timing_cache_path(self, key: EngineKey) -> Path:
        """The per-device timing cache, shared by every plan built on this TensorRT + GPU."""
        device = hashlib.sha256(f"{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}".encode())
        return self.root / f"timing-{device.hexdigest()[:16]}.cache"


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
