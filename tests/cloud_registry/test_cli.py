"""The fleet CLI against a live registry: push, rollout, devices, registry; every bad input is one error
line and one hint line with a non-zero exit."""

from __future__ import annotations

import pytest

from tests.cli import run
from tests.cloud_registry.conftest import ADMIN_TOKEN
from tests.cloud_registry.helpers import make_bundle
from tests.services import free_port


@pytest.fixture
def env(live, monkeypatch):
    monkeypatch.setenv("EDGECTL_REGISTRY_URL", live.url)
    monkeypatch.setenv("EDGECTL_REGISTRY_TOKEN", ADMIN_TOKEN)
    return live


def assert_user_error(result, code: int, *fragments: str) -> None:
    assert result.code == code, (result.out, result.err)
    lines = result.error_lines
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_push_and_the_fleet_commands(capsys, env, signing, tmp_path):
    for version in (1, 2):
        archive = make_bundle(tmp_path, signing[0], version=version)
        pushed = run(capsys, "push", archive, "--json")
        assert pushed.code == 0, pushed.err
        assert pushed.json()["schema"] == "edgectl.push/1" and pushed.json()["created"] is True
    again = run(capsys, "push", archive)
    assert again.code == 0 and "already registered" in again.out

    enroll = run(capsys, "devices", "enroll", "--group", "lab", "--tag", "cam", "--json")
    assert enroll.code == 0 and enroll.json()["group"] == "lab"
    import httpx

    for name in ("dev-1", "dev-2"):
        token = run(capsys, "devices", "enroll", "--json").json()["token"]
        enrolled = httpx.post(f"{env.url}/v1/enroll", json={"token": token, "name": name, "target": "cpu"})
        assert enrolled.status_code == 200
    listed = run(capsys, "devices", "list", "--json").json()
    assert [d["name"] for d in listed["devices"]] == ["dev-1", "dev-2"]
    assert "dev-1" in run(capsys, "devices", "list", "--target", "cpu").out
    shown = run(capsys, "devices", "show", "dev-1", "--json").json()
    assert shown["schema"] == "edgectl.device/1" and shown["target"] == "cpu"

    created = run(
        capsys, "rollout", "create", "digits", "--version", "2", "--waves", "50,100", "--bake", "0", "--json"
    )
    assert created.code == 0, created.err
    rollout_id = str(created.json()["id"])
    assert created.json()["waves"][0]["size"] == 1
    status = run(capsys, "rollout", "status", rollout_id)
    assert status.code == 0 and "running" in status.out and "wave" in status.out
    assert (
        run(capsys, "rollout", "pause", rollout_id, "--reason", "lunch", "--json").json()["state"] == "paused"
    )
    assert run(capsys, "rollout", "resume", rollout_id, "--json").json()["state"] == "running"
    rolled = run(capsys, "rollout", "rollback", rollout_id, "--reason", "test", "--json").json()
    assert rolled["state"] == "rolled_back" and rolled["decisions"][-1]["reason"] == "test"
    assert run(capsys, "rollout", "list", "--json").json()["rollouts"][0]["id"] == int(rollout_id)
    exp = run(capsys, "rollout", "create", "digits", "--version", "2", "--waves", "exp:50,2", "--json")
    assert [w["percent"] for w in exp.json()["waves"]] == [50, 100]
    assert run(capsys, "rollout", "abort", str(exp.json()["id"]), "--json").json()["state"] == "aborted"

    token = run(capsys, "registry", "token", "ci", "--role", "deployer", "--json").json()
    assert token["role"] == "deployer" and token["token"].startswith("edr_")
    out = tmp_path / "broker"
    files = run(capsys, "registry", "broker-files", "--out", out, "--json")
    assert files.code == 0 and (out / "mosquitto.passwd").read_text().count("$7$101$") == 2
    assert "pattern read edgectl/cmd/default/%u/#" in (out / "mosquitto.acl").read_text()

    # Tokens are listed without their secrets; a revoked one stops working at once.
    assert run(capsys, "rollout", "list", "--token", token["token"]).code == 0
    listed = run(capsys, "registry", "tokens", "--json").json()
    assert listed["schema"] == "edgectl.tokens/1"
    ci = next(t for t in listed["tokens"] if t["name"] == "ci")
    assert ci == {**ci, "role": "deployer", "revoked_at": None} and "token" not in ci
    assert token["token"] not in run(capsys, "registry", "tokens").out
    revoked = run(capsys, "registry", "revoke-token", "ci", "--json").json()
    assert revoked["schema"] == "edgectl.token-revoked/1" and revoked["revoked_at"] is not None
    assert "revoked" in run(capsys, "registry", "tokens").out
    assert_user_error(
        run(capsys, "rollout", "list", "--token", token["token"]), 2, "missing or invalid API token"
    )

    # A revoked device leaves the fleet list and the broker's password file.
    gone = run(capsys, "devices", "revoke", "dev-2", "--json").json()
    assert gone["schema"] == "edgectl.device/1" and gone["name"] == "dev-2" and gone["revoked"] is True
    assert [d["name"] for d in run(capsys, "devices", "list", "--json").json()["devices"]] == ["dev-1"]
    run(capsys, "registry", "broker-files", "--out", out)
    assert "dev-2:" not in (out / "mosquitto.passwd").read_text()


def test_push_errors(capsys, env, signing, tmp_path):
    assert_user_error(run(capsys, "push", tmp_path / "missing.edgebundle"), 2, "not a bundle archive")
    assert_user_error(run(capsys, "push", tmp_path), 2, "archive, not the bundle folder")
    from edgebundle import generate_keypair, load_private_key

    stranger = load_private_key(generate_keypair(tmp_path / "k")[0])
    assert_user_error(run(capsys, "push", make_bundle(tmp_path, stranger)), 2, "does not trust")
    archive = make_bundle(tmp_path, signing[0])
    assert_user_error(
        run(capsys, "push", archive, "--token", "wrong"), 2, "missing or invalid API token", "--token"
    )
    assert_user_error(run(capsys, "push", archive, "--token", ""), 2, "no registry API token")
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert_user_error(run(capsys, "push", archive, "--registry", unreachable), 5, "cannot reach the registry")
    assert_user_error(run(capsys, "push", archive, "--registry", "ftp://x"), 2, "not http(s)")


def test_rollout_errors(capsys, env, signing, tmp_path):
    assert_user_error(run(capsys, "rollout", "create", "digits"), 2, "exactly one of --version and --alias")
    for waves in ("10,5,100", "10,50", "abc", "exp:1", "exp:1,1"):
        assert_user_error(
            run(capsys, "rollout", "create", "digits", "--version", "1", "--waves", waves), 2, "--waves"
        )
    assert_user_error(run(capsys, "rollout", "create", "nope", "--version", "1"), 2, "no version 1")
    assert_user_error(run(capsys, "rollout", "status", "999"), 2, "no rollout 999")
    run(capsys, "push", make_bundle(tmp_path, signing[0]))
    assert_user_error(run(capsys, "rollout", "create", "digits", "--version", "1"), 2, "no device to update")
    assert_user_error(
        run(capsys, "rollout", "create", "digits", "--version", "1", "--success-threshold", "2"),
        2,
        "success_threshold",
    )
    reader = run(capsys, "registry", "token", "viewer", "--role", "read-only", "--json").json()["token"]
    assert_user_error(run(capsys, "rollout", "pause", "1", "--token", reader), 2, "deployer role")


def test_devices_and_registry_errors(capsys, env, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECTL_REGISTRY_CONFIG", "")  # `serve --config` sets it; teardown removes it again
    assert_user_error(run(capsys, "devices", "show", "ghost"), 2, "no device named 'ghost'")
    assert_user_error(run(capsys, "devices", "enroll", "--name", "Bad Name"), 2, "invalid name")
    assert_user_error(run(capsys, "registry", "token", "x", "--role", "root"), 2, "--role 'root'")
    assert_user_error(run(capsys, "registry", "revoke-token", "ghost"), 2, "no token named 'ghost'")
    assert_user_error(run(capsys, "registry", "revoke-token", "../devices"), 2, "not a token name")
    assert_user_error(run(capsys, "devices", "revoke", "ghost"), 2, "no device named 'ghost'")
    reader = run(capsys, "registry", "token", "viewer", "--role", "read-only", "--json").json()["token"]
    assert_user_error(run(capsys, "registry", "tokens", "--token", reader), 2, "admin role")
    assert_user_error(run(capsys, "devices", "revoke", "ghost", "--token", reader), 2, "admin role")
    assert_user_error(
        run(capsys, "registry", "serve", "--config", tmp_path / "nope.yaml"), 2, "does not exist"
    )
    bad = tmp_path / "settings.yaml"
    bad.write_text("storage: floppy\n")
    assert_user_error(run(capsys, "registry", "serve", "--config", bad), 2, "settings are invalid")
    monkeypatch.delenv("EDGECTL_REGISTRY_CONFIG", raising=False)
    monkeypatch.setenv("EDGECTL_REGISTRY_FLEET", "Not/A/Fleet")
    assert_user_error(run(capsys, "registry", "serve"), 2, "settings are invalid")


def test_serve_with_ray_jobs_but_no_ray_says_which_extra(capsys, env, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("EDGECTL_REGISTRY_JOBS_RUNNER", "ray")
    monkeypatch.setenv("EDGECTL_REGISTRY_DATA_DIR", str(tmp_path / "data"))
    result = run(capsys, "registry", "serve")
    assert_user_error(result, 2, "needs the Python package 'ray'")
    assert "edgectl[jobs-ray]" in result.err


def test_the_typed_client_gives_back_exactly_the_json_the_registry_sent(env, signing, tmp_path):
    """Every answer is the route's schema; dumped again it is the registry's own JSON, so the CLI's
    --json output did not change when the client became typed."""
    import httpx

    from registry_api import schemas
    from registry_api.client import RegistryClient

    with RegistryClient(env.url, ADMIN_TOKEN) as client:
        pushed = client.push(make_bundle(tmp_path, signing[0]))
        assert isinstance(pushed, schemas.PushResult) and pushed.created
        client.create_token("ci", "deployer")
        client.enrollment_token(group="lab")
        answers = {
            "/api/v1/models": client.models(),
            "/api/v1/models/digits": client.model("digits"),
            "/api/v1/tokens": client.tokens(),
            "/api/v1/devices": client.devices(),
            "/api/v1/rollouts": client.rollouts(),
        }
    raw = httpx.Client(base_url=env.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    for path, answer in answers.items():
        dumped = (
            [item.model_dump(mode="json") for item in answer]
            if isinstance(answer, list)
            else answer.model_dump(mode="json")
        )
        assert dumped == raw.get(path).json(), path
    assert isinstance(answers["/api/v1/tokens"][0], schemas.TokenInfo)


def test_an_answer_of_an_unknown_shape_is_one_error_not_a_traceback(capsys, tmp_path):
    """A server that answers 200 with something else than the route's schema (another program on the
    port, a registry of another version) is one error line and a hint, exit 5 like an unreachable one."""
    import http.server
    import threading

    class Stranger(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'[{"name": "dev-1"}]'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Stranger)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run(capsys, "devices", "list", "--registry", url, "--token", "t")
        assert_user_error(result, 5, "the registry answered the devices in a shape", "0.fleet")
        assert "Traceback" not in result.err
    finally:
        server.shutdown()
        server.server_close()
