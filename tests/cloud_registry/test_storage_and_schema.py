"""The schema comes from Alembic migrations and matches the models; artifact stores are content-addressed
and refuse anything but a sha256 as a name; settings come from the environment and a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def test_migrations_create_exactly_the_models_schema(backend, postgres, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cloud_registry.db import make_engine, migrate
    from cloud_registry.models import Base

    url = postgres.database() if backend == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent: a second replica starting does nothing
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
        if backend == "postgresql":  # storage parameters are not compared: the devices' fillfactor here
            from sqlalchemy import text

            from cloud_registry.models import DEVICES_FILLFACTOR

            options = connection.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'devices'"))
            assert options == [f"fillfactor={DEVICES_FILLFACTOR}"], options
    engine.dispose()
    assert diff == [], "models and migrations differ: add a migration (alembic revision --autogenerate)"


def test_local_store_is_content_addressed_and_refuses_other_names(tmp_path):
    from cloud_registry.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    data = bytes(range(256)) * 10
    source = tmp_path / "blob"
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert store.put(sha, source) is True and store.put(sha, source) is False
    assert b"".join(store.read(sha)) == data
    assert b"".join(store.read(sha, 10, 19)) == data[10:20]
    assert b"".join(store.read(sha, 2550)) == data[2550:]
    for bad in ("../../etc/passwd", "A" * 64, sha[:-1], f"{sha[:62]}/.", ""):
        with pytest.raises(ValueError):
            store.exists(bad)
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == [sha]


def test_s3_store_against_an_s3_api(tmp_path, monkeypatch):
    """boto3 against moto's S3 server (a local HTTP implementation of the S3 API)."""
    from moto.server import ThreadedMotoServer

    from cloud_registry.core.config import Settings
    from cloud_registry.storage import S3Store, make_store
    from tests.services import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="edgectl")
        store = make_store(
            Settings(
                storage="s3",
                s3_bucket="edgectl",
                s3_endpoint_url=endpoint,
                s3_region="us-east-1",
                data_dir=tmp_path,
            )
        )
        assert isinstance(store, S3Store)
        data = b"bundle bytes " * 1000
        source = tmp_path / "blob"
        source.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        assert store.put(sha, source) is True and store.put(sha, source) is False
        assert store.exists(sha) and not store.exists("0" * 64)
        assert b"".join(store.read(sha)) == data
        assert b"".join(store.read(sha, 100, 199)) == data[100:200]
        with pytest.raises(ValueError):
            store.exists("../other-bucket-key")
        keys = [o["Key"] for o in store.client.list_objects_v2(Bucket="edgectl")["Contents"]]
        assert keys == [f"artifacts/{sha}"]
    finally:
        server.stop()


def test_settings_from_environment_and_file(tmp_path, monkeypatch):
    from cloud_registry.core.config import Settings

    config = tmp_path / "registry.yaml"
    config.write_text(
        "fleet: plant-7\nmqtt_host: broker.local\nmax_upload_bytes: 1000\ntrusted_keys: [a.pub]\n"
    )
    monkeypatch.setenv("EDGECTL_REGISTRY_CONFIG", str(config))
    monkeypatch.setenv("EDGECTL_REGISTRY_MAX_UPLOAD_BYTES", "2000")  # the environment wins over the file
    monkeypatch.setenv("EDGECTL_REGISTRY_TRUSTED_KEYS", "k1.pub,k2.pub")
    monkeypatch.setenv("EDGECTL_REGISTRY_ADMIN_TOKEN", "secret-admin-token")
    settings = Settings()
    assert (settings.fleet, settings.mqtt_host, settings.max_upload_bytes) == (
        "plant-7",
        "broker.local",
        2000,
    )
    assert settings.trusted_keys == [Path("k1.pub"), Path("k2.pub")]
    assert "secret-admin-token" not in repr(settings) and "secret-admin-token" not in str(
        settings.model_dump()
    )
    assert settings.sqlalchemy_url.startswith("sqlite:///")
    monkeypatch.setenv("EDGECTL_REGISTRY_FLEET", "Bad/Fleet")
    with pytest.raises(ValueError):
        Settings()


def test_mosquitto_hash_matches_mosquitto_passwd(tmp_path):
    """Our $7$ hash of a password, with mosquitto_passwd's own salt and iterations, is its hash exactly."""
    import base64
    import shutil
    import subprocess

    from cloud_registry.core.security import mosquitto_hash, mosquitto_verify

    tool = shutil.which("mosquitto_passwd")
    assert tool, "mosquitto_passwd is missing; `make install` installs Debian's mosquitto"
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "alice", "s3cret pass"], check=True, capture_output=True)
    user, theirs = path.read_text().strip().split(":", 1)
    _, kind, iterations, salt, _ = theirs.split("$")
    assert (user, kind) == ("alice", "7")
    assert mosquitto_hash("s3cret pass", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs
    assert mosquitto_verify("s3cret pass", theirs) and not mosquitto_verify("wrong", theirs)
    ours = mosquitto_hash("another")
    assert ours.startswith("$7$101$") and mosquitto_verify("another", ours)


def test_the_cli_help_stays_light():
    import subprocess
    import sys

    code = (
        "import sys\nfrom edgectl.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({'torch', 'numpy', 'fastapi', 'sqlalchemy', 'httpx', 'paho'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
