"""Shared fixtures: real models trained here, real data, real keys; nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exports are cached per test session, never in the developer's home."""
    os.environ["EDGECTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgectl-cache"))
    os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("yolo-config"))
    os.environ["YOLO_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The demo CNN trained on scikit-learn's digits, with calibration and validation folders."""
    from toolchain.demo import train_digits_model

    return train_digits_model(tmp_path_factory.mktemp("digits"), epochs=8)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edgebundle import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny YOLO detector from an Ultralytics yaml, trained here on synthetic shapes: (checkpoint, data.yaml)."""
    from tests.samples import make_shapes_detection_dataset, train_tiny_yolo

    root = tmp_path_factory.mktemp("yolo")
    data_yaml = make_shapes_detection_dataset(root / "shapes", val=48)
    checkpoint = train_tiny_yolo(data_yaml, root / "train")
    return checkpoint, data_yaml


@pytest.fixture(scope="session")
def text_sample(tmp_path_factory: pytest.TempPathFactory):
    """The DistilBERT-style Keras text classifier trained here on synthetic reviews (3 epochs: ~99 %)."""
    from tests.text_samples import make_text_classifier

    return make_text_classifier(tmp_path_factory.mktemp("text"), epochs=3)
