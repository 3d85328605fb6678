"""Retraining fixtures: the real digits model (trained and built once per session), a registry whose
retraining loop the tests drive by hand, and wire helpers for devices that upload samples."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud_registry.conftest import ADMIN_TOKEN, Api, make_settings, postgres, signing  # noqa: F401
from tests.retraining.digits import REPO, DigitsV1, make_v1

EDGECTL = [sys.executable, "-m", "edgectl.main"]


@pytest.fixture(scope="session")
def digits_v1(tmp_path_factory: pytest.TempPathFactory) -> DigitsV1:
    return make_v1(tmp_path_factory.mktemp("digits-v1"))


def retraining_settings(data_dir: Path, public_key: Path, sign_key: Path | None = None, **extra):
    """Registry settings for the retraining tests: the loop is driven by hand unless a test says otherwise."""
    return make_settings(
        data_dir,
        public_key,
        **{
            "retrain_interval_s": 3600,
            "drift_interval_s": 1.0,
            "jobs_sign_key": sign_key,
            "edgectl_command": EDGECTL,
            **extra,
        },
    )


@pytest.fixture
def rapi(tmp_path: Path, signing, request: pytest.FixtureRequest) -> Iterator[Api]:  # noqa: F811
    """A registry (TestClient) trusting the session's test key, on SQLite or, with `backend`, PostgreSQL."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    database_url = ""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgresql":
        database_url = request.getfixturevalue("postgres").database()
    app = create_app(retraining_settings(tmp_path / "registry", signing[1], database_url=database_url))
    with TestClient(app) as client:
        yield Api(client, app.state.registry, tmp_path / "registry")


def enroll_in(api: Api, name: str, group: str | None) -> dict[str, str]:
    """Enroll a device into a group; its device-token header."""
    answer = api.enroll(name, group=group)
    return {"Authorization": f"Bearer {answer['device_token']}"}


def sample_body(device: str, arrays, *, model: str = "digits", version: int = 1, confidence: float = 0.3):  # type: ignore[no-untyped-def]
    """A SampleUpload of float arrays (each (1, C, H, W)), with fresh sample ids."""
    from edgewire.device_api import encode_input

    return {
        "fleet": "default",
        "device": device,
        "model": {"name": model, "version": version},
        "samples": [
            {
                "sample_id": uuid.uuid4().hex,
                "captured_at": time.time(),
                "confidence": confidence,
                "predicted_class": 3,
                "predicted_label": "3",
                "layout": "NCHW",
                **encode_input(array),
            }
            for array in arrays
        ],
    }


__all__ = ["ADMIN_TOKEN", "REPO", "enroll_in", "retraining_settings", "sample_body"]
