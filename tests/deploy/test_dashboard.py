"""The Grafana dashboard: every query parses as PromQL and reads metrics streamer exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import DASHBOARD, exported_metric_names, metric_names_in, promtool

pytestmark = pytest.mark.deploy

# What Grafana substitutes before a query reaches Prometheus.
_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$topic": ".*",
    "$job": "streamer",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> Iterator[tuple[dict[str, Any], str]]:
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def as_promql(expr: str) -> str:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


def test_every_query_parses(tmp_path: Path) -> None:
    records = [
        {"record": f"dashboard:panel_{panel['id']}:{i}", "expr": as_promql(expr)}
        for i, (panel, expr) in enumerate(queries())
    ]
    assert len(records) >= 20
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_queries_only_use_metrics_that_streamer_exports() -> None:
    exported = exported_metric_names() | {"up"}
    for panel, expr in queries():
        unknown = metric_names_in(expr) - exported
        assert unknown == set(), f"panel {panel['title']!r} uses unknown metrics {unknown}"


def test_datasource_is_a_variable_everywhere() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_instance_and_topic_views_filter_every_streamer_query() -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"instance", "topic"} <= variables
    for panel, expr in queries():
        for selector in re.findall(r"streamer_[a-z_]+\{([^}]*)\}", expr):
            assert 'instance=~"$instance"' in selector, f"{panel['title']}: {expr}"
        if "streamer_consumer_lag_messages" in expr or "streamer_events_consumed_total" in expr:
            assert 'topic=~"$topic"' in expr, f"{panel['title']}: {expr}"


@pytest.mark.parametrize(
    ("view", "metric"),
    [
        ("throughput by outcome", "streamer_events_processed_total"),
        ("no-op ratio", 'outcome="noop"'),
        ("lag by partition", "sum by (topic, partition) (streamer_consumer_lag_messages"),
        ("time to drain", "clamp_min(sum by (topic) (rate(streamer_events_consumed_total"),
        ("dead letters by reason", "sum by (reason) (increase(streamer_dead_letters_total"),
        ("HEAD latency", "histogram_quantile(0.99, sum by (le) (rate(streamer_s3_head_duration"),
        ("DB latency", "histogram_quantile(0.99, sum by (le) (rate(streamer_db_write_duration"),
        ("circuit state", "streamer_circuit_state"),
        ("rebalances", "streamer_rebalances_total"),
        ("paused partitions", "streamer_paused_partitions"),
    ],
)
def test_dashboard_has_the_view(view: str, metric: str) -> None:
    assert any(metric in expr for _, expr in queries()), f"no panel shows {view}"


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
