"""The object index in docker-compose.yml and deploy/k8s: MinIO notifies the topic that
`streamer objects consume` reads, beside the consumers, with the same image and configuration."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from tests.deploy.support import DEPLOY
from tests.deploy.test_manifests import (
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


@pytest.mark.parametrize("command", [["objects", "consume"], ["objects", "reconcile"]])
def test_the_commands_exist(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_compose_wires_minio_notifications_to_the_objects_job() -> None:
    svc = services()
    minio, objects = environment(svc["minio"]), svc["objects"]
    assert minio["MINIO_NOTIFY_KAFKA_ENABLE_STREAMER"] == "on"
    assert minio["MINIO_NOTIFY_KAFKA_BROKERS_STREAMER"] == "kafka:9092"
    assert minio["MINIO_NOTIFY_KAFKA_QUEUE_DIR_STREAMER"], "events lost while Kafka is down"
    topic = minio["MINIO_NOTIFY_KAFKA_TOPIC_STREAMER"]
    assert topic == environment(objects).get("STREAMER_OBJECTS_TOPIC", "catalog.objects.v1")
    init = str(svc["minio-init"]["command"])
    assert "mc event add" in init and "arn:minio:sqs::STREAMER:kafka" in init
    assert f"local/{configured('s3_bucket')}" in init.split("mc event add")[1]
    assert objects["command"] == ["objects", "consume"]
    assert objects["image"] == svc["consumer"]["image"]
    assert environment(svc["consumer"])["STREAMER_ETAG_SOURCE"] == "index"
    assert duration_s(objects["stop_grace_period"]) > float(configured("shutdown_grace_s"))
    assert depends_on(objects)["init"]["condition"] == "service_completed_successfully"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamer")
    assert "objects" in job["dns_sd_configs"][0]["names"]


def test_k8s_objects_job_shares_image_and_configuration_with_the_consumers() -> None:
    objects = k8s("objects.yaml", "Deployment")
    consumer = container(k8s("deployment.yaml", "Deployment"))
    c = container(objects)
    assert c["args"] == ["objects", "consume"] and "command" not in c
    assert c["image"] == consumer["image"] and c["envFrom"] == consumer["envFrom"]
    assert pod_spec(objects)["terminationGracePeriodSeconds"] > float(
        configured("shutdown_grace_s")
    )
