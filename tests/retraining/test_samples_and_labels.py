"""Sample upload (opt-in per group, capped per device per day, stored by content) and label files
(all or nothing), by API and CLI; datasets are versioned snapshots with a stable held-out split."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.cli import run
from tests.cloud_registry.conftest import live  # noqa: F401
from tests.cloud_registry.helpers import make_bundle
from tests.retraining.conftest import ADMIN_TOKEN, enroll_in, sample_body


def _arrays(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=(1, 1, 8, 8)).astype(np.float32) for _ in range(count)]


def test_sample_upload_is_off_until_its_group_switches_it_on_and_is_capped_per_day(rapi, signing, tmp_path):
    assert rapi.push(make_bundle(tmp_path, signing[0])).status_code == 201
    field, lab = enroll_in(rapi, "cam-1", "field"), enroll_in(rapi, "cam-2", "lab")
    client = rapi.client
    assert client.get("/v1/device/config", headers=field).json()["samples"]["enabled"] is False
    arrays = _arrays(6)
    refused = client.post("/v1/device/samples", json=sample_body("cam-1", arrays[:3]), headers=field)
    assert refused.status_code == 403 and "off" in refused.json()["detail"]

    settings = {"enabled": True, "max_per_day": 5, "per_upload": 8, "upload_interval_s": 5}
    assert client.put("/api/v1/groups/field/sampling", json=settings, headers=rapi.admin()).status_code == 200
    assert client.get("/v1/device/config", headers=field).json()["samples"]["max_per_day"] == 5
    assert client.get("/v1/device/config", headers=lab).json()["samples"]["enabled"] is False

    first = sample_body("cam-1", arrays[:3])
    answer = client.post("/v1/device/samples", json=first, headers=field).json()
    assert answer == {"accepted": 3, "duplicates": 0, "over_cap": 0, "remaining_today": 2}
    again = client.post("/v1/device/samples", json=first, headers=field).json()  # a retried upload
    assert again == {"accepted": 0, "duplicates": 3, "over_cap": 0, "remaining_today": 2}
    more = client.post("/v1/device/samples", json=sample_body("cam-1", arrays[3:]), headers=field).json()
    assert more == {"accepted": 2, "duplicates": 0, "over_cap": 1, "remaining_today": 0}
    other = client.post("/v1/device/samples", json=sample_body("cam-2", arrays[:1]), headers=field)
    assert other.status_code == 403  # a device uploads only its own samples

    rows = client.get("/api/v1/models/digits/samples", headers=rapi.admin()).json()
    assert len(rows) == 5 and {r["group"] for r in rows} == {"field"} and rows[0]["device"] == "cam-1"
    stored = client.get(f"/api/v1/samples/{rows[0]['sample_id']}/input", headers=rapi.admin())
    np.testing.assert_array_equal(np.load(io.BytesIO(stored.content)), arrays[0])
    assert rows[0]["input_sha256"] in {b.sha256 for b in _blobs(rapi)}
    reader = rapi.token("read-only")
    assert client.get(f"/api/v1/samples/{rows[0]['sample_id']}/input", headers=reader).status_code == 403


def _blobs(api):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from cloud_registry import models as m

    with api.registry.factory() as session:
        return session.scalars(select(m.Blob)).all()


def test_label_uploads_are_all_or_nothing(rapi, signing, tmp_path):
    assert rapi.push(make_bundle(tmp_path, signing[0])).status_code == 201
    device = enroll_in(rapi, "cam-1", "field")
    client, admin = rapi.client, rapi.admin()
    client.put("/api/v1/groups/field/sampling", json={"enabled": True}, headers=admin)
    body = sample_body("cam-1", _arrays(4))
    assert client.post("/v1/device/samples", json=body, headers=device).json()["accepted"] == 4
    ids = [s["sample_id"] for s in body["samples"]]

    unknown = client.post(
        "/api/v1/models/digits/labels",
        json={"labels": [{"sample_id": ids[0], "label": "1"}, {"sample_id": "f" * 32, "label": "2"}]},
        headers=admin,
    )
    assert unknown.status_code == 422 and "f" * 32 in unknown.json()["detail"]
    not_a_class = client.post(
        "/api/v1/models/digits/labels",
        json={"labels": [{"sample_id": ids[0], "label": "cat"}]},
        headers=admin,
    )
    assert not_a_class.status_code == 422 and "'cat'" in not_a_class.json()["detail"]
    assert "0, 1, 2" in not_a_class.json()["detail"]  # it names the model's classes
    assert client.get("/api/v1/models/digits/samples?labeled=true", headers=admin).json() == []

    labels = [{"sample_id": ids[0], "label": "7"}, {"sample_id": ids[1], "label": 2}]
    done = client.post(
        "/api/v1/models/digits/labels", json={"labels": labels, "source": "alice"}, headers=admin
    )
    assert done.json() == {"labeled": 2, "changed": 0, "unchanged": 0, "total_labeled": 2}
    relabel = [{"sample_id": ids[0], "label": "8"}, {"sample_id": ids[1], "label": "2"}]
    assert client.post("/api/v1/models/digits/labels", json={"labels": relabel}, headers=admin).json() == {
        "labeled": 0,
        "changed": 1,
        "unchanged": 1,
        "total_labeled": 2,
    }
    labeled = client.get("/api/v1/models/digits/samples?labeled=true", headers=admin).json()
    assert {(r["sample_id"], r["label"], r["label_name"]) for r in labeled} == {
        (ids[0], 8, "8"),
        (ids[1], 2, "2"),
    }
    assert (
        client.post(
            "/api/v1/models/digits/labels", json={"labels": labels}, headers=rapi.token("read-only")
        ).status_code
        == 403
    )


def test_snapshots_are_versions_with_a_stable_held_out_split(rapi, signing, tmp_path):
    from cloud_registry import crud, db, samples

    assert rapi.push(make_bundle(tmp_path, signing[0])).status_code == 201
    device = enroll_in(rapi, "cam-1", "field")
    client, admin = rapi.client, rapi.admin()
    client.put("/api/v1/groups/field/sampling", json={"enabled": True, "max_per_day": 1000}, headers=admin)
    nhwc = sample_body("cam-1", [a.transpose(0, 2, 3, 1) for a in _arrays(40)])  # a TFLite device's layout
    for sample in nhwc["samples"]:
        sample["layout"] = "NHWC"
    assert client.post("/v1/device/samples", json=nhwc, headers=device).json()["accepted"] == 40
    ids = [s["sample_id"] for s in nhwc["samples"]]
    labels = [{"sample_id": sid, "label": str(i % 10)} for i, sid in enumerate(ids)]
    client.post("/api/v1/models/digits/labels", json={"labels": labels}, headers=admin)
    registry = rapi.registry
    with db.transaction(registry.factory) as session:
        model = crud.get_model(session, name="digits")
        first = samples.create_snapshot(
            session,
            registry.store,
            model=model,
            groups=["field"],
            holdout_fraction=0.3,
            folder=tmp_path / "s1",
        )
    assert first.number == 1 and first.train_samples + first.holdout_samples == 40
    assert 2 <= first.holdout_samples <= 24  # a hash split, about 30 % (12 of 40)
    with np.load(tmp_path / "s1" / "holdout.npz") as data:
        held_out = set(data["ids"].tolist())
        assert data["x"].shape[1:] == (1, 8, 8)  # channels first, whatever the device sent
        assert str(data["layout"]) == "NCHW"
    more = sample_body("cam-1", _arrays(20, seed=1))
    client.post("/v1/device/samples", json=more, headers=device)
    client.post(
        "/api/v1/models/digits/labels",
        json={"labels": [{"sample_id": s["sample_id"], "label": "1"} for s in more["samples"]]},
        headers=admin,
    )
    with db.transaction(registry.factory) as session:
        model = crud.get_model(session, name="digits")
        second = samples.create_snapshot(
            session,
            registry.store,
            model=model,
            groups=["field"],
            holdout_fraction=0.3,
            folder=tmp_path / "s2",
        )
    assert second.number == 2 and second.train_samples + second.holdout_samples == 60
    with np.load(tmp_path / "s2" / "holdout.npz") as data:
        assert held_out <= set(data["ids"].tolist())  # held out once, held out for good
    listed = client.get("/api/v1/models/digits/datasets", headers=admin).json()
    assert [d["number"] for d in listed] == [1, 2] and listed[1]["train_sha256"] != listed[0]["train_sha256"]
    assert registry.store.exists(listed[1]["holdout_sha256"])


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(live, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EDGECTL_REGISTRY_URL", live.url)
    monkeypatch.setenv("EDGECTL_REGISTRY_TOKEN", ADMIN_TOKEN)
    return live


def assert_user_error(result, *fragments: str, code: int = 2) -> None:
    assert result.code == code, (result.out, result.err)
    lines = result.error_lines
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_cli_samples_export_and_label_round_trip(capsys, cli_env, signing, tmp_path):
    import csv

    import httpx

    assert run(capsys, "push", make_bundle(tmp_path, signing[0])).code == 0
    assert run(capsys, "retrain", "sampling", "field").out.count("off") == 1
    switched = run(capsys, "retrain", "sampling", "field", "--enable", "--max-per-day", "50", "--json")
    assert switched.code == 0 and switched.json()["samples"]["enabled"] is True
    token = run(capsys, "devices", "enroll", "--group", "field", "--json").json()["token"]
    device = httpx.post(
        f"{cli_env.url}/v1/enroll", json={"token": token, "name": "cam-1", "target": "cpu"}
    ).json()
    arrays = _arrays(3)
    posted = httpx.post(
        f"{cli_env.url}/v1/device/samples",
        json=sample_body("cam-1", arrays),
        headers={"Authorization": f"Bearer {device['device_token']}"},
    )
    assert posted.json()["accepted"] == 3

    out = tmp_path / "to-label"
    exported = run(capsys, "retrain", "samples", "digits", "--unlabeled", "--export", out)
    assert exported.code == 0 and "3 samples" in exported.out
    rows = list(csv.DictReader((out / "labels.csv").read_text().splitlines()))
    assert [r["label"] for r in rows] == ["", "", ""]
    for row, array in zip(rows, arrays, strict=True):
        np.testing.assert_array_equal(np.load(out / f"{row['sample_id']}.npy"), array)
        assert (out / f"{row['sample_id']}.png").stat().st_size > 0
    rows[0]["label"], rows[1]["label"] = "4", "9"  # a person labels two of the three
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labeled = run(capsys, "retrain", "label", "digits", out / "labels.csv", "--source", "alice", "--json")
    assert labeled.code == 0, labeled.err
    assert labeled.json()["labeled"] == 2 and labeled.json()["total_labeled"] == 2
    remaining = run(capsys, "retrain", "samples", "digits", "--unlabeled", "--json").json()["samples"]
    assert [r["sample_id"] for r in remaining] == [rows[2]["sample_id"]]


def test_cli_refuses_bad_label_files_and_settings_with_one_error_and_a_hint(
    capsys, cli_env, signing, tmp_path
):
    assert run(capsys, "push", make_bundle(tmp_path, signing[0])).code == 0
    no_columns = tmp_path / "a.csv"
    no_columns.write_text("id,class\nabc,1\n")
    assert_user_error(run(capsys, "retrain", "label", "digits", no_columns), "sample_id and label columns")
    bad_id = tmp_path / "b.csv"
    bad_id.write_text("sample_id,label\nnot-an-id,1\n")
    assert_user_error(run(capsys, "retrain", "label", "digits", bad_id), "line 2", "not a sample id")
    empty = tmp_path / "c.csv"
    empty.write_text("sample_id,label\n" + "a" * 32 + ",\n")
    assert_user_error(run(capsys, "retrain", "label", "digits", empty), "labels no sample")
    bad_json = tmp_path / "d.jsonl"
    bad_json.write_text('{"sample_id": "' + "a" * 32 + '", "label": 1}\n{oops\n')
    assert_user_error(run(capsys, "retrain", "label", "digits", bad_json), "line 2 is not JSON")
    unknown = tmp_path / "e.jsonl"
    unknown.write_text('{"sample_id": "' + "a" * 32 + '", "label": 1}\n')
    assert_user_error(run(capsys, "retrain", "label", "digits", unknown), "not samples of digits")
    assert_user_error(run(capsys, "retrain", "label", "digits", tmp_path / "missing.csv"), "does not exist")
    assert_user_error(
        run(capsys, "retrain", "sampling", "field", "--max-confidence", "2"),
        "--max-confidence",
        "less than or equal",
    )
    assert_user_error(run(capsys, "retrain", "samples", "nope"), "no model named 'nope'")


def test_cli_refuses_bad_sources_runs_jobs_and_evaluation_data(capsys, cli_env, signing, tmp_path):
    archive = make_bundle(tmp_path, signing[0])
    assert run(capsys, "push", archive).code == 0
    not_the_source = tmp_path / "other.pt"
    not_the_source.write_bytes(b"not the model v1 was built from")
    assert_user_error(
        run(capsys, "retrain", "source", "digits", "1", not_the_source), "was built from source"
    )
    assert_user_error(run(capsys, "retrain", "source", "digits", "1", tmp_path), "is not a file")
    assert_user_error(run(capsys, "retrain", "source", "digits", "9", not_the_source), "has no version 9")
    assert_user_error(
        run(capsys, "retrain", "run", "digits"), "no retraining policy", "edgectl retrain policy set"
    )
    assert_user_error(run(capsys, "retrain", "job", "999"), "no retraining job 999")
    assert_user_error(run(capsys, "retrain", "cancel", "999"), "no retraining job 999")
    data = tmp_path / "holdout.npz"
    np.savez(data, inputs=np.zeros((2, 1, 8, 8), np.float32))
    assert_user_error(
        run(capsys, "retrain", "evaluate", archive, "--data", data), "needs arrays 'x' (inputs) and 'y'"
    )
    assert_user_error(
        run(capsys, "retrain", "evaluate", tmp_path / "nope.edgebundle", "--data", data), "does not exist"
    )
    assert_user_error(
        run(capsys, "retrain", "evaluate", archive, "--data", tmp_path / "x.csv"), "is not a .npz"
    )
