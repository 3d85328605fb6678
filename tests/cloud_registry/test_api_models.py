"""Models and bundles over the API, on SQLite and PostgreSQL: upload checks, content addressing, aliases, roles."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.cloud_registry.helpers import make_bundle


def test_push_records_version_artifact_lineage_and_figures(api, backend, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0], version=3, parent=2, top1=0.94, p95_ms=2.0)
    response = api.push(archive)
    assert response.status_code == 201, response.text
    pushed = response.json()
    assert (pushed["model"], pushed["version"], pushed["target"]) == ("digits", 3, "cpu")
    assert pushed["created"] and pushed["stored_bytes"]

    version = api.client.get("/api/v1/models/digits/versions/3", headers=api.admin()).json()
    assert version["lineage"]["parent_version"] == 2
    assert version["lineage"]["training_data"] == "s3://data/digits@v1"
    assert version["lineage"]["trigger"] == "manual"
    (artifact,) = version["artifacts"]
    assert artifact["metric"] == "top1" and artifact["metric_value"] == pytest.approx(0.94)
    assert artifact["latency_ms_p95"] == pytest.approx(2.0)
    assert artifact["archive_sha256"] == pushed["archive_sha256"]


def test_same_bytes_are_stored_once(api, backend, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0])
    first, again = api.push(archive).json(), api.push(archive)
    assert (
        again.status_code == 201
        and again.json()["created"] is False
        and again.json()["stored_bytes"] is False
    )
    stored = [p for p in (api.data_dir / "artifacts").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [first["archive_sha256"]]


def test_per_target_artifacts_of_one_version(api, backend, signing, tmp_path):
    for target in ("cpu", "rpi5"):
        assert api.push(make_bundle(tmp_path, signing[0], target=target)).status_code == 201
    model = api.client.get("/api/v1/models/digits", headers=api.admin()).json()
    assert [a["target"] for a in model["version_list"][0]["artifacts"]] == ["cpu", "rpi5"]


def test_a_version_is_immutable(api, backend, signing, tmp_path):
    assert api.push(make_bundle(tmp_path, signing[0], payload=b"one")).status_code == 201
    conflict = api.push(make_bundle(tmp_path / "b", signing[0], payload=b"two"))
    assert conflict.status_code == 409 and "immutable" in conflict.json()["detail"]
    other_source = api.push(make_bundle(tmp_path / "c", signing[0], target="rpi5", source="another"))
    assert other_source.status_code == 409 and "new version" in other_source.json()["detail"]


def test_untrusted_or_tampered_bundles_are_refused(api, signing, tmp_path):
    from edgebundle import generate_keypair, load_private_key

    stranger = load_private_key(generate_keypair(tmp_path / "stranger")[0])
    refused = api.push(make_bundle(tmp_path, stranger))
    assert refused.status_code == 422 and "does not trust" in refused.json()["detail"]

    # Same manifest, other artifact bytes: the hash in the signed manifest no longer holds.
    archive = make_bundle(tmp_path / "t", signing[0])
    members = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model.onnx"):
                data = b"tampered" + data[8:]
            members.append((member, data))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(buffer.getvalue())
    tampered = api.push(archive)
    assert tampered.status_code == 422 and "sha256" in tampered.json()["detail"]
    assert not list((api.data_dir / "artifacts").rglob("*")) or all(
        p.is_dir() for p in (api.data_dir / "artifacts").rglob("*")
    )


def test_unsafe_archive_is_refused_before_anything_is_stored(api, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    archive = tmp_path / "evil.edgebundle"
    archive.write_bytes(buffer.getvalue())
    response = api.push(archive)
    assert response.status_code == 422 and "unsafe path" in response.json()["detail"]
    assert not (tmp_path / "escape.txt").exists() and not (api.data_dir.parent / "escape.txt").exists()


def test_upload_size_limit(tmp_path, signing):
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app
    from tests.cloud_registry.conftest import ADMIN_TOKEN, make_settings

    app = create_app(make_settings(tmp_path / "r", signing[1], max_upload_bytes=1000))
    archive = make_bundle(tmp_path, signing[0], payload=bytes(range(256)) * 40)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        declared = client.post("/api/v1/bundles", content=archive.read_bytes(), headers=headers)
        assert declared.status_code == 413

        def chunks():  # no Content-Length: the limit holds while streaming
            data = archive.read_bytes()
            for i in range(0, len(data), 300):
                yield data[i : i + 300]

        streamed = client.post("/api/v1/bundles", content=chunks(), headers=headers)
        assert streamed.status_code == 413
    assert not list((tmp_path / "r" / "artifacts").rglob("*.edgebundle"))


def test_aliases_point_at_versions(api, backend, signing, tmp_path):
    for version in (1, 2):
        api.push(make_bundle(tmp_path, signing[0], version=version))
    put = api.client.put("/api/v1/models/digits/aliases/production", json={"version": 1}, headers=api.admin())
    assert put.status_code == 200
    api.client.put("/api/v1/models/digits/aliases/staging", json={"version": 2}, headers=api.admin())
    api.client.put("/api/v1/models/digits/aliases/production", json={"version": 2}, headers=api.admin())
    assert (
        api.client.get("/api/v1/models/digits/aliases/production", headers=api.admin()).json()["version"] == 2
    )
    listed = api.client.get("/api/v1/models", headers=api.admin()).json()
    assert listed[0]["aliases"] == {"production": 2, "staging": 2}
    assert (
        api.client.put(
            "/api/v1/models/digits/aliases/x", json={"version": 9}, headers=api.admin()
        ).status_code
        == 404
    )
    assert api.client.delete("/api/v1/models/digits/aliases/staging", headers=api.admin()).status_code == 204
    assert api.client.get("/api/v1/models/digits/aliases/staging", headers=api.admin()).status_code == 404


def test_roles(api, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0])
    reader, deployer = api.token("read-only"), api.token("deployer")
    assert api.client.get("/api/v1/models").status_code == 401
    assert api.client.get("/api/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.client.get("/api/v1/models", headers=reader).status_code == 200
    assert api.push(archive, reader).status_code == 403
    assert api.push(archive, deployer).status_code == 201
    assert (
        api.client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=deployer).status_code
        == 403
    )
    listed = api.client.get("/api/v1/tokens", headers=api.admin()).json()
    assert {t["name"] for t in listed} >= {"t-read-only", "t-deployer"} and all(
        "token" not in t for t in listed
    )
    assert api.client.delete("/api/v1/tokens/t-deployer", headers=api.admin()).status_code == 200
    assert api.push(archive, deployer).status_code == 401


def test_tokens_are_stored_as_hashes_only(api):
    from sqlalchemy import select

    from cloud_registry import models as m
    from tests.cloud_registry.conftest import ADMIN_TOKEN

    created = api.token("deployer")["Authorization"].split()[1]
    with api.registry.factory() as session:
        hashes = list(session.scalars(select(m.ApiToken.token_hash)))
    assert created not in hashes and ADMIN_TOKEN not in hashes and len(hashes) == 2


@pytest.mark.parametrize("name", ["../etc", "a b", "..", "x" * 200])
def test_names_from_clients_are_validated(api, name):
    response = api.client.get(f"/api/v1/models/{name}", headers=api.admin())
    assert response.status_code in (404, 422)
    assert api.client.get("/v1/device/bundles/..%2F..%2Fregistry.db", headers=api.admin()).status_code in (
        401,
        404,
        422,
    )
