"""The replicator in docker-compose.yml and deploy/k8s: it runs `streamer replicate` with a
destination bucket that exists, beside the consumers, with the same image and configuration."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from tests.deploy.support import DEPLOY
from tests.deploy.test_manifests import (
    K8S,
    configured,
    container,
    depends_on,
    duration_s,
    environment,
    k8s,
    pod_spec,
    services,
)

pytestmark = pytest.mark.deploy


@pytest.mark.parametrize("command", [["replicate"], ["replicate", "verify"]])
def test_the_commands_exist(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_compose_runs_a_scalable_replicator_with_its_bucket() -> None:
    svc = services()
    replicator = svc["replicator"]
    assert replicator["command"] == ["replicate"]
    assert replicator["image"] == svc["consumer"]["image"]
    assert "container_name" not in replicator and not replicator.get("ports")
    env = environment(replicator)
    bucket = env["STREAMER_REPLICA_BUCKET"]
    assert f"local/{bucket}" in str(svc["minio-init"]["command"]), "replica bucket never created"
    assert env["STREAMER_REPLICA_GROUP_ID"] != env.get("STREAMER_GROUP_ID"), "shares a group"
    assert duration_s(replicator["stop_grace_period"]) > float(configured("shutdown_grace_s"))
    deps = depends_on(replicator)
    assert deps["init"]["condition"] == "service_completed_successfully"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamer")
    assert "replicator" in job["dns_sd_configs"][0]["names"]


def test_k8s_replicator_shares_image_and_configuration_with_the_consumers() -> None:
    replicator = k8s("replicator.yaml", "Deployment")
    consumer = container(k8s("deployment.yaml", "Deployment"))
    c = container(replicator)
    assert c["args"] == ["replicate"] and "command" not in c
    assert c["image"] == consumer["image"] and c["envFrom"] == consumer["envFrom"]
    assert configured("replica_bucket"), "the ConfigMap names no destination bucket"
    assert configured("replica_group_id") != configured("group_id")
    assert pod_spec(replicator)["terminationGracePeriodSeconds"] > float(
        configured("shutdown_grace_s")
    )
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"]["path"] == path
    labels = replicator["spec"]["template"]["metadata"]["labels"]
    assert replicator["spec"]["selector"]["matchLabels"].items() <= labels.items()
    consumer_labels = k8s("deployment.yaml", "Deployment")["spec"]["selector"]["matchLabels"]
    assert not consumer_labels.items() <= labels.items(), "consumer selectors catch replicator pods"
    assert (K8S / "replicator.yaml").is_file()
