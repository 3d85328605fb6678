"""The registry's data folder is 0700 and registry.db 0600, like command.key (issue 16, defect 5).

They hold API token and MQTT password hashes and the fleet's telemetry. A registry started on a folder and
database made readable by every local user (what older versions left behind) takes that access away.
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.cloud_registry.conftest import make_settings


def _mode(path) -> int:  # type: ignore[no-untyped-def]
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():  # type: ignore[no-untyped-def]
    previous = os.umask(0o022)  # the usual default: new files 0644, folders 0755
    yield
    os.umask(previous)


def _run_registry(data_dir, public_key) -> None:  # type: ignore[no-untyped-def]
    from cloud_registry.service import Registry

    registry = Registry(make_settings(data_dir, public_key))
    registry.start()
    try:
        with registry.factory() as session, session.begin():  # a write, so the WAL file exists
            from cloud_registry import crud

            crud.create_api_token(session, name="t", role="read-only")
    finally:
        registry.stop()


def test_a_new_data_folder_and_database_are_private(tmp_path, signing, loose_umask):
    data = tmp_path / "registry"
    _run_registry(data, signing[1])
    assert _mode(data) == 0o700
    assert _mode(data / "registry.db") == 0o600
    assert _mode(data / "command.key") == 0o600
    for extra in ("registry.db-wal", "registry.db-shm"):
        if (data / extra).exists():
            assert _mode(data / extra) == 0o600, extra


def test_an_existing_world_readable_folder_and_database_are_tightened(tmp_path, signing, loose_umask):
    data = tmp_path / "registry"
    data.mkdir(mode=0o755)
    (data / "registry.db").touch()
    os.chmod(data, 0o755)
    os.chmod(data / "registry.db", 0o644)
    _run_registry(data, signing[1])
    assert (_mode(data), _mode(data / "registry.db")) == (0o700, 0o600)
