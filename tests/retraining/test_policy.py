"""The retraining policy: stored per model with revisions, set by API and CLI; every bad policy is refused,
by the API with 422 and its field, by the CLI with one error line and one hint line."""

from __future__ import annotations

import pytest
import yaml

from tests.cli import run
from tests.cloud_registry.conftest import live  # noqa: F401
from tests.cloud_registry.helpers import make_bundle
from tests.retraining.conftest import ADMIN_TOKEN
from tests.retraining.test_samples_and_labels import assert_user_error

GOOD = {
    "entry_point": {"callable": "toolchain.finetune_digits:finetune", "params": {"epochs": 3}},
    "training_data": "sklearn:digits",
    "groups": ["field"],
    "triggers": {"drift": {"threshold": 0.3, "sustained_s": 600}, "labeled_samples": {"min_new": 200}},
    "rollout": {"waves": [10, 50, 100], "gates": {"bake_s": 120}},
}
# (a change to GOOD, the field the refusal names, a fragment of the reason)
BAD = [
    ({"entry_point": {"callable": "not a callable"}}, "entry_point.callable", "match pattern"),
    ({"entry_point": {}}, "entry_point", "exactly one of callable"),
    ({"entry_point": {"callable": "a.b:c", "command": ["train"]}}, "entry_point", "exactly one of callable"),
    ({"entry_point": {"command": ["train.py", "{nope}"]}}, "entry_point", "placeholder {nope} is unknown"),
    (
        {"entry_point": {"callable": "a:b", "env": {"lower": "x"}}},
        "entry_point.env",
        "environment variable name",
    ),
    ({"triggers": {"drift": {"threshold": 0}}}, "triggers.drift.threshold", "greater than 0"),
    ({"triggers": {"drift": {"metric": "accuracy"}}}, "triggers.drift.metric", "score"),
    (
        {"triggers": {"labeled_samples": {"min_new": 0}}},
        "triggers.labeled_samples.min_new",
        "greater than or equal to 1",
    ),
    ({"triggers": {"cron": "* * * * *"}}, "triggers.cron", "xtra"),
    ({"groups": ["Field Team"]}, "groups", "lowercase"),
    ({"evaluation": {"holdout_fraction": 1.0}}, "evaluation.holdout_fraction", "less than 1"),
    ({"build": {"extra_args": ["--version", "9"]}}, "build.extra_args", "set by the job itself"),
    ({"rollout": {"waves": [50, 10, 100]}}, "rollout.waves", "strictly increasing"),
    ({"rollout": {"waves": [10, 50]}}, "rollout.waves", "last wave must be 100"),
    ({"min_labeled_samples": 0}, "min_labeled_samples", "greater than or equal to 1"),
]


def _with(change: dict) -> dict:
    policy = {**GOOD}
    for key, value in change.items():
        policy[key] = value
    return policy


@pytest.mark.parametrize(("change", "where", "reason"), BAD)
def test_the_api_refuses_a_bad_policy_naming_the_field(rapi, signing, tmp_path, change, where, reason):
    assert rapi.push(make_bundle(tmp_path, signing[0])).status_code == 201
    response = rapi.client.put(
        "/api/v1/models/digits/retraining-policy", json=_with(change), headers=rapi.admin()
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert ".".join(str(p) for p in detail["loc"][1:]).startswith(where.split(".")[0])
    assert reason.lower() in detail["msg"].lower() or reason in str(detail), detail


def test_policies_are_revised_in_place_and_need_a_deployer(rapi, signing, tmp_path):
    assert rapi.push(make_bundle(tmp_path, signing[0])).status_code == 201
    client, admin = rapi.client, rapi.admin()
    assert client.get("/api/v1/models/digits/retraining-policy", headers=admin).status_code == 404
    assert client.put("/api/v1/models/nope/retraining-policy", json=GOOD, headers=admin).status_code == 404
    reader = rapi.token("read-only")
    assert client.put("/api/v1/models/digits/retraining-policy", json=GOOD, headers=reader).status_code == 403
    first = client.put("/api/v1/models/digits/retraining-policy", json=GOOD, headers=admin).json()
    assert first["revision"] == 1 and first["policy"]["rollout"]["waves"] == [10, 50, 100]
    assert first["policy"]["cooldown_s"] == 3600  # defaults are filled in and stored
    second = client.put(
        "/api/v1/models/digits/retraining-policy", json={**GOOD, "enabled": False}, headers=admin
    ).json()
    assert second["revision"] == 2 and second["policy"]["enabled"] is False
    assert client.get("/api/v1/models/digits/retraining-policy", headers=reader).json()["revision"] == 2
    assert client.delete("/api/v1/models/digits/retraining-policy", headers=admin).status_code == 204
    assert client.get("/api/v1/models/digits/retraining-policy", headers=admin).status_code == 404


@pytest.fixture
def cli_env(live, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EDGECTL_REGISTRY_URL", live.url)
    monkeypatch.setenv("EDGECTL_REGISTRY_TOKEN", ADMIN_TOKEN)
    return live


def test_cli_sets_and_shows_a_policy_file(capsys, cli_env, signing, tmp_path):
    assert run(capsys, "push", make_bundle(tmp_path, signing[0])).code == 0
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    done = run(capsys, "retrain", "policy", "set", "digits", path, "--json")
    assert done.code == 0, done.err
    assert done.json()["schema"] == "edgectl.retrain-policy/1" and done.json()["revision"] == 1
    shown = run(capsys, "retrain", "policy", "show", "digits")
    assert (
        shown.code == 0
        and "toolchain.finetune_digits:finetune" in shown.out
        and "drift, labeled_samples" in shown.out
    )
    assert "blocked: no job can start for want of labels: 0 labeled samples, the policy needs 20" in shown.out
    assert run(capsys, "retrain", "policy", "delete", "digits").code == 0
    assert_user_error(run(capsys, "retrain", "policy", "show", "digits"), "no retraining policy")


@pytest.mark.parametrize(("change", "where", "reason"), BAD[:6] + BAD[8:9] + BAD[11:13])
def test_cli_refuses_a_bad_policy_file_before_sending_it(capsys, cli_env, tmp_path, change, where, reason):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(_with(change)))
    result = run(capsys, "retrain", "policy", "set", "digits", path)
    assert_user_error(result, where, "docs/retraining.md")
    assert reason.lower() in result.err.lower() or "unknown field" in result.err


def test_cli_refuses_unreadable_policy_files(capsys, cli_env, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("entry_point: [unclosed\n")
    assert_user_error(run(capsys, "retrain", "policy", "set", "digits", broken), "not valid YAML", "line")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert_user_error(run(capsys, "retrain", "policy", "set", "digits", listed), "must be a mapping")
    assert_user_error(
        run(capsys, "retrain", "policy", "set", "digits", tmp_path / "missing.yaml"), "does not exist"
    )


def test_cli_drift_table_has_the_time_of_each_score_and_input_drift_apart(capsys, cli_env, signing, tmp_path):
    from cloud_registry import db
    from cloud_registry import models as m

    assert run(capsys, "push", make_bundle(tmp_path, signing[0])).code == 0
    at = 1796220000.0  # 2026-12-02 14:00:00 UTC
    with db.transaction(cli_env.registry.factory) as session:
        model = session.query(m.Model).one()
        session.add(
            m.DriftScore(
                model_id=model.id, model_version=1, device_group="field", bucket=1, at=at, window_s=900,
                devices=2, samples=400, psi_confidence=0.041, psi_class=6.9, mean_shift_z=0.4, score=0.041,
                summary={},
            )
        )  # fmt: skip
    shown = run(capsys, "retrain", "drift", "digits", "--group", "field")
    assert shown.code == 0, shown.err
    assert "2026-12-02 14:00:00" in shown.out and "0.041" in shown.out and "6.900" in shown.out
    assert "time (UTC)" in " ".join(shown.out.split())
