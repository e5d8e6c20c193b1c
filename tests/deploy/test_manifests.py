"""docker-compose.yml, the Dockerfile and deploy/k8s: structure checked here, since no Docker runs."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import Settings
from tests.deploy.support import DEPLOY, ROOT

pytestmark = pytest.mark.deploy

K8S = DEPLOY / "k8s"


def setting_names() -> set[str]:
    return {f"STREAMER_{name.upper()}" for name in Settings.model_fields}


def valid_env_name(name: str) -> bool:
    return (
        name in setting_names()
        or (name.startswith("STREAMER_KAFKA__") and len(name) > len("STREAMER_KAFKA__"))
        or name.startswith("AWS_")
    )


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        docs[path.name] = doc
    return docs


def test_compose_streamer_services_use_only_real_settings() -> None:
    services = compose()["services"]
    streamer_services = [s for s in services.values() if s.get("image", "").startswith("streamer")]
    assert len(streamer_services) >= 2
    for service in streamer_services:
        env = service["environment"]
        assert env, service
        bad = [name for name in env if not valid_env_name(name)]
        assert bad == [], f"unknown settings {bad}"
        assert env["STREAMER_KAFKA_BOOTSTRAP"].startswith("kafka:")


def test_compose_dependencies_exist_and_wait_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = dict.fromkeys(depends)
        for dep, condition in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if isinstance(condition, dict):
                wanted = condition["condition"]
                if wanted == "service_healthy":
                    assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    assert services["consumer"]["depends_on"]["init"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_consumer_scales() -> None:
    consumer = compose()["services"]["consumer"]
    assert "container_name" not in consumer
    assert "ports" not in consumer, "a fixed host port breaks --scale"
    assert consumer["command"] == ["consume"]


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_in_compose_scrapes_the_consumer_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamer")
    assert job["dns_sd_configs"][0]["names"] == ["consumer"]
    assert job["dns_sd_configs"][0]["port"] == 9400


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["streamer"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["consume"\]$', text, re.MULTILINE)
    assert re.search(r"^USER \d+$", text, re.MULTILINE)
    assert "/healthz" in text
    assert ".[dev]" not in text


@pytest.mark.parametrize("command", [["consume"], ["db", "migrate"], ["topics", "create"]])
def test_commands_used_by_the_manifests_exist(command: list[str]) -> None:
    manifests = (ROOT / "docker-compose.yml").read_text() + (K8S / "job-init.yaml").read_text()
    assert " ".join(command) in manifests
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    docs = k8s_docs()
    assert {"deployment.yaml", "configmap.yaml", "job-init.yaml", "scaledobject.yaml"} <= set(docs)
    for name, doc in docs.items():
        if name == "kustomization.yaml":
            continue
        assert doc["apiVersion"] and doc["kind"], name
        assert doc["metadata"]["name"], name


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


def test_config_and_secret_keys_are_real_settings() -> None:
    docs = k8s_docs()
    for name in ("configmap.yaml", "secret.example.yaml"):
        doc = docs[name]
        keys = doc.get("data") or doc.get("stringData")
        bad = [k for k in keys if not valid_env_name(k)]
        assert bad == [], f"{name}: unknown settings {bad}"
    assert "STREAMER_DATABASE_URL" not in docs["configmap.yaml"]["data"], "a secret in a ConfigMap"


def container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_deployment_probes_hit_the_health_server() -> None:
    deployment = k8s_docs()["deployment.yaml"]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == Settings.model_fields["metrics_port"].default
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for var in c.get("env", []):
        assert valid_env_name(var["name"]), var["name"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings.model_fields["shutdown_grace_s"].default
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_autoscaling_is_capped_at_the_partition_count() -> None:
    scaled = k8s_docs()["scaledobject.yaml"]
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == k8s_docs()["deployment.yaml"]["metadata"]["name"]
    )
    partitions = int(k8s_docs()["configmap.yaml"]["data"]["STREAMER_TOPIC_PARTITIONS"])
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    topics = {t["metadata"]["topic"] for t in scaled["spec"]["triggers"]}
    config = k8s_docs()["configmap.yaml"]["data"]
    assert topics == {config["STREAMER_MEDIA_TOPIC"], config["STREAMER_PRODUCT_TOPIC"]}
    groups = {t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"]}
    assert groups == {config["STREAMER_GROUP_ID"]}


def test_init_job_and_deployment_read_the_same_configuration() -> None:
    docs = k8s_docs()
    for name in ("deployment.yaml", "job-init.yaml"):
        refs = container(docs[name])["envFrom"]
        assert {"configMapRef": {"name": "streamer"}} in refs, name
        assert {"secretRef": {"name": "streamer"}} in refs, name


def test_settings_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in sorted(setting_names()) if n not in readme and n != "STREAMER_KAFKA"]
    assert missing == [], f"settings missing from the README's configuration table: {missing}"
