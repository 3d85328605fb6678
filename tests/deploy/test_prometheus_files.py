"""The shipped Prometheus, Alertmanager and Grafana files, checked by the ecosystem's own tools: the alert
rules' unit tests with `promtool test rules`, the configs with `promtool check config` and `amtool
check-config`; every rule has a test, every metric a rule or panel names is one the registry or an agent
exports, and the Grafana dashboard holds together (its queries run against a real Prometheus in
test_prometheus_live.py)."""

from __future__ import annotations

import json
import re
import shutil

import yaml

from tests.deploy.prometheus import DEPLOY, RULES, shipped_config, tool

RULE_TESTS = RULES.with_name("edgectl.rules.test.yml")
DASHBOARD = DEPLOY / "grafana" / "edgectl-fleet.json"
METRIC = re.compile(r"\b(edgectl_(?:registry|agent)_[a-z0-9_]+)")


def test_alert_rules_pass_their_promtool_unit_tests():
    checked = tool("promtool", "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = tool("promtool", "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_broken_rule_fails_its_unit_test(tmp_path):
    """The rule tests can fail: the offline bound loosened to 5 % fires on the group the test keeps quiet."""
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    text = RULES.read_text().replace(
        "sum by (group) (edgectl_registry_group_devices) > 0.2",
        "sum by (group) (edgectl_registry_group_devices) > 0.05",
    )
    assert text != RULES.read_text()
    (tmp_path / RULES.name).write_text(text)
    tested = tool("promtool", "test", "rules", tmp_path / RULE_TESTS.name)
    assert tested.returncode != 0 and "EdgectlGroupOffline" in tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test():
    rules = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert rules == tested
    assert len(rules) >= 9


def test_prometheus_config_checks(tmp_path):
    config = shipped_config(tmp_path, registry="127.0.0.1:8000", token="edr_x", agents=["127.0.0.1:8380"])
    checked = tool("promtool", "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The shipped one as it is, with its token file where it says.
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    registry_job = shipped["scrape_configs"][0]
    assert registry_job["authorization"]["credentials_file"].endswith(".token")  # never the token inline


def test_alertmanager_config_checks_and_routes_to_a_slack_webhook(tmp_path):
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    checked = tool("amtool", "check-config", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(path.read_text())
    slack = config["receivers"][0]["slack_configs"][0]
    assert "api_url_file" in slack and "api_url" not in slack  # the webhook URL is a secret, in a file
    routed = tool(
        "amtool",
        "config",
        "routes",
        "test",
        "--config.file",
        path,
        "alertname=EdgectlRolloutHalted",
        "severity=page",
    )
    assert routed.returncode == 0 and routed.stdout.strip() == "slack-fleet", routed.stdout + routed.stderr
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(
        path.read_text().replace("receiver: slack-fleet\n  group_by", "receiver: nobody\n  group_by")
    )
    assert tool("amtool", "check-config", broken).returncode != 0


def _exported_names(tmp_path) -> set[str]:
    """Every metric family a registry (all its families on, per-device too) and an agent export."""
    import inspect

    from fastapi.testclient import TestClient

    import device_agent.metrics as agent_metrics
    import device_agent.status as agent_status
    from cloud_registry.main import create_app
    from edgebundle import generate_keypair
    from tests.cloud_registry.conftest import ADMIN_TOKEN, make_settings

    _, public = generate_keypair(tmp_path / "keys")
    app = create_app(make_settings(tmp_path / "registry", public, metrics_per_device=True))
    with TestClient(app) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    exported = set(re.findall(r"^# TYPE (edgectl_registry_[a-z0-9_]+) ", text, re.M))
    for module in (agent_status, agent_metrics):
        exported |= set(re.findall(r"# TYPE (edgectl_agent_[a-z0-9_]+)", inspect.getsource(module)))
    exported |= {f"edgectl_agent_inference_latency_seconds_{s}" for s in ("bucket", "sum", "count")}
    return exported


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_rules_and_panels_name_only_exported_metrics(tmp_path):
    exported = _exported_names(tmp_path)
    named = set(METRIC.findall(RULES.read_text())) | {
        n for e in _dashboard_exprs() for n in METRIC.findall(e)
    }
    assert named and named <= exported, sorted(named - exported)


def test_the_grafana_dashboard_holds_together():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "edgectl-fleet" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)  # ids unique
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Fleet", "Rollouts", "Drift and retraining", "Ingest", "Agents"]
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add(cell)
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}, panel["type"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


def _unknown_keys(written, decoded, path: str = "") -> list[str]:
    """Keys of `written` that the decoded model does not carry back (not in Grafana's schema)."""
    if isinstance(written, dict):
        return [
            problem
            for key, value in written.items()
            for problem in (
                [f"{path}/{key}"]
                if key not in decoded
                else _unknown_keys(value, decoded[key], f"{path}/{key}")
            )
        ]
    if isinstance(written, list):
        return [
            p
            for i, (a, b) in enumerate(zip(written, decoded, strict=True))
            for p in _unknown_keys(a, b, f"{path}[{i}]")
        ]
    return [] if written == decoded else [f"{path}: {written!r} read back as {decoded!r}"]


def _round_trip(dashboard: dict) -> dict:
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()  # panel and query types (prometheus dataqueries among them)
    return json.loads(json.dumps(Dashboard.from_json(dashboard), default=lambda o: o.to_json()))


def test_the_dashboard_matches_grafanas_schema():
    """Read with Grafana's Foundation SDK (models generated from Grafana 11.6's dashboard schema): every
    key and value the file holds comes back, so none is misspelt or out of the schema."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert _unknown_keys(dashboard, _round_trip(dashboard)) == []


def test_a_misspelt_dashboard_key_is_caught():
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["gridPoss"] = dashboard["panels"][1].pop("gridPos")
    dashboard["panels"][1]["targets"][0]["exprr"] = dashboard["panels"][1]["targets"][0].pop("expr")
    assert sorted(_unknown_keys(dashboard, _round_trip(dashboard))) == [
        "/panels[1]/gridPoss",
        "/panels[1]/targets[0]/exprr",
    ]
