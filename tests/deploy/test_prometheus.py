"""Alert rules and the Prometheus configuration: valid, unit-tested rule by rule, on real metrics."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.support import PROMETHEUS, exported_metric_names, metric_names_in, promtool

pytestmark = pytest.mark.deploy


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", PROMETHEUS / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - fires == set(), "rules without a test where they fire"
    assert names - quiet == set(), "rules without a test where they stay quiet"


def test_every_rule_tells_the_on_call_what_to_do() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations.get("summary"), rule["alert"]
        assert annotations.get("description"), rule["alert"]
        assert len(annotations.get("runbook", "").strip().splitlines()) >= 2, rule["alert"]


def test_rules_only_use_metrics_that_streamer_exports() -> None:
    exported = exported_metric_names()
    for rule in rules():
        unknown = metric_names_in(rule["expr"]) - exported
        assert unknown == set(), f"{rule['alert']} uses unknown metrics {unknown}"
