"""docker-compose.yml, the Dockerfile and deploy/k8s: structure checked here, since no Docker runs.

Names are checked against the code they configure: settings against ``Settings.fields()``
(and their values through ``load_settings``), librdkafka pass-through properties against
librdkafka itself, subcommands against the Typer app.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from confluent_kafka import KafkaException, Producer
from typer.testing import CliRunner

from streamer.cli import app
from streamer.errors import ConfigError
from streamer.settings import Settings, load_settings
from tests.deploy.metrics import registry_with_every_metric
from tests.deploy.support import DEPLOY, ROOT

pytestmark = pytest.mark.deploy

K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KAFKA_PASSTHROUGH = "STREAMER_KAFKA__"


# --- helpers ----------------------------------------------------------------------------------


def setting_names() -> set[str]:
    return {f"STREAMER_{name.upper()}" for name in Settings.fields()}


def passthrough_prefixes() -> list[str]:
    """``STREAMER_<FIELD>__``: settings that take named entries (librdkafka properties, headers)."""
    return [
        f"STREAMER_{name.upper()}__"
        for name, info in Settings.fields().items()
        if str(info.annotation).startswith("dict")
    ]


def valid_setting(name: str) -> bool:
    return name in setting_names() or any(
        name.startswith(prefix) and len(name) > len(prefix) for prefix in passthrough_prefixes()
    )


def default(field: str) -> Any:
    return Settings.fields()[field].default


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "no services"
    return doc


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def _interpolated(value: str) -> str:
    """Compose's ``${NAME:-default}`` as its default, ``${NAME:?message}`` (required from
    the operator's .env) as a stand-in value long enough for any setting."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: f"given-in-dotenv-{m.group(1).lower()}", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either Compose form (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else _interpolated(str(v)) for k, v in env.items()}


def built_images() -> set[str]:
    return {s["image"] for s in services().values() if "build" in s and "image" in s}


def streamer_services() -> dict[str, dict[str, Any]]:
    """Services that run the image built from the Dockerfile."""
    built = built_images()
    return {n: s for n, s in services().items() if "build" in s or s.get("image") in built}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: {"condition": "service_started"} for d in deps}
    return {d: c or {"condition": "service_started"} for d, c in deps.items()}


def duration_s(value: str | int) -> float:
    """A Compose duration such as ``40s``, ``1m30s`` or ``500ms``."""
    if isinstance(value, int):
        return float(value)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a process with only this environment would load them."""
    for key in list(os.environ):
        if key.startswith("STREAMER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        return load_settings(env_file=Path("/nonexistent/dev.env"))
    except ConfigError as exc:
        pytest.fail(str(exc))


def assert_librdkafka_accepts(settings: Settings) -> None:
    """librdkafka rejects unknown properties and bad values when the client is created."""
    config = settings.kafka.client_config(**{"bootstrap.servers": "127.0.0.1:1"})
    try:
        Producer(config)
    except KafkaException as exc:
        pytest.fail(f"librdkafka rejects {sorted(settings.kafka.kafka)}: {exc}")


def k8s_files() -> dict[str, list[dict[str, Any]]]:
    files = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        files[path.name] = docs
    return files


def k8s(file: str, kind: str) -> dict[str, Any]:
    matches = [d for d in k8s_files()[file] if d.get("kind") == kind]
    assert len(matches) == 1, f"{file}: expected one {kind}, found {len(matches)}"
    return matches[0]


def configmap_data() -> dict[str, str]:
    return k8s("configmap.yaml", "ConfigMap")["data"]


def secret_data() -> dict[str, str]:
    secret = k8s("secret.example.yaml", "Secret")
    return secret.get("stringData") or secret.get("data") or {}


def configured(field: str) -> Any:
    """The value the ConfigMap sets for a setting, else its default."""
    return configmap_data().get(f"STREAMER_{field.upper()}", default(field))


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    return containers[0]


def streamer_invocations(text: str) -> list[list[str]]:
    """``streamer <subcommand ...>`` as written in a shell command line."""
    found = []
    for part in re.split(r"&&|\|\||;", text):
        words = shlex.split(part)
        if words and words[0] == "streamer":
            found.append([w for w in words[1:] if not w.startswith("-")])
    return found


def container_invocations(c: dict[str, Any]) -> list[list[str]]:
    """The streamer commands a container with its own ``command`` runs."""
    command = [*c["command"], *c.get("args", [])]
    if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        return streamer_invocations(" ".join(command[2:]))
    return streamer_invocations(shlex.join(command))


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_runs_the_whole_stack() -> None:
    svc = services()
    kafka = svc["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = environment(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"], "not KRaft"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert env["KAFKA_LOG_DIRS"] in {
        v.split(":", 1)[1] for v in kafka["volumes"] if isinstance(v, str)
    }, "Kafka's log.dirs is not on its volume"
    assert "healthcheck" in kafka
    assert svc["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in str(svc["postgres"]["healthcheck"]["test"])
    assert svc["minio-init"]["image"].startswith("minio/mc")
    assert "local/catalog" in str(svc["minio-init"]["command"])
    assert svc["prometheus"]["image"].startswith("prom/prometheus")
    assert svc["grafana"]["image"].startswith("grafana/grafana")
    assert {"init", "consumer", "api"} <= set(streamer_services())


def test_compose_streamer_services_use_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services()
    for name, service in streamer_services().items():
        env = environment(service)
        assert env, f"{name} has no environment"
        bad = [k for k in env if k.startswith("STREAMER_") and not valid_setting(k)]
        assert bad == [], f"{name}: not settings: {bad}"
        settings = settings_from(env, monkeypatch)
        assert_librdkafka_accepts(settings)
        # Every address points at a service of this stack, not at the defaults.
        hosts = {
            "STREAMER_KAFKA_BOOTSTRAP": settings.kafka.kafka_bootstrap.split(",")[0].rsplit(":", 1)[
                0
            ],
            "STREAMER_DATABASE_URL": urlsplit(settings.database.dsn).hostname,
            "STREAMER_S3_ENDPOINT_URL": urlsplit(settings.s3.s3_endpoint_url or "").hostname,
        }
        for key, host in hosts.items():
            assert host in svc, f"{name}: {key} points at {host!r}, not a compose service"
        assert settings.s3.s3_bucket in str(svc["minio-init"]["command"]), "bucket never created"


def test_compose_image_is_built_not_pulled() -> None:
    built = built_images()
    assert built, "no service builds the Dockerfile"
    for name, service in streamer_services().items():
        assert "build" in service or service["image"] in built, name


def test_compose_dependencies_exist_and_wait_for_the_right_thing() -> None:
    svc = services()
    for name, service in svc.items():
        for dep, spec in depends_on(service).items():
            assert dep in svc, f"{name} depends on unknown service {dep!r}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in svc[dep], f"{name} waits for {dep}, which has no check"
                assert svc[dep]["healthcheck"].get("disable") is not True
            if condition == "service_completed_successfully":
                assert svc[dep].get("restart", "no") == "no", f"{dep} restarts: never completes"
    init = depends_on(svc["init"])
    assert init["kafka"]["condition"] == "service_healthy"
    assert init["postgres"]["condition"] == "service_healthy"
    consumer = depends_on(svc["consumer"])
    assert consumer["init"]["condition"] == "service_completed_successfully"
    assert consumer["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_init_migrates_then_creates_topics() -> None:
    command = services()["init"]["command"]
    text = command if isinstance(command, str) else " ".join(map(str, command))
    assert streamer_invocations(text) == [["db", "migrate"], ["topics", "create"]]


def test_compose_consumer_scales() -> None:
    consumer = services()["consumer"]
    assert "container_name" not in consumer, "a fixed name breaks --scale"
    assert "hostname" not in consumer
    assert not consumer.get("ports"), "a fixed host port breaks --scale"
    assert consumer["command"] == ["consume"]
    assert str(configured("metrics_port")) in map(str, consumer.get("expose", []))
    grace = duration_s(consumer["stop_grace_period"])
    assert grace > float(environment(consumer).get("STREAMER_SHUTDOWN_GRACE_S", 0) or 0)
    assert grace > default("shutdown_grace_s"), "Docker kills the batch in hand (10 s default)"


def test_compose_mounts_files_that_exist() -> None:
    mounted: dict[str, Path] = {}
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source, target = str(volume.get("source", "")), str(volume.get("target", ""))
            else:
                source, _, rest = volume.partition(":")
                target = rest.split(":", 1)[0]
            if source.startswith(("./", "../", "/")):
                path = (ROOT / source).resolve()
                assert path.is_relative_to(ROOT), f"{name} mounts {source} from outside the repo"
                assert path.exists(), f"{name} mounts {source}, which is not in the repo"
                mounted[target] = path
    for target in (
        "/etc/prometheus/prometheus.yml",
        "/etc/prometheus/alerts.yml",
        "/etc/grafana/provisioning",
        "/var/lib/grafana/dashboards",
    ):
        assert target in mounted, f"nothing mounted at {target}"
    home = environment(services()["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        rel = Path(home).relative_to("/var/lib/grafana/dashboards")
        assert (mounted["/var/lib/grafana/dashboards"] / rel).is_file(), home


def test_prometheus_in_compose_scrapes_every_consumer() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamer")
    sd = job["dns_sd_configs"][0]
    assert "consumer" in sd["names"] and set(sd["names"]) <= set(services())
    assert sd["port"] == int(configured("metrics_port"))
    for rule_file in config.get("rule_files", []):
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before FROM: {line}"
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_and_runs_the_cli_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "not multi-stage"
    for stage in stages:
        assert re.match(r"FROM python:3\.11-slim\b", stage[0]), stage[0]
    final = stages[-1]
    assert 'ENTRYPOINT ["streamer"]' in final
    assert 'CMD ["consume"]' in final
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1] not in {"0", "root"}, "runs as root"
    assert f"EXPOSE {default('metrics_port')}" in final
    healthcheck = next(ln for ln in final if ln.startswith("HEALTHCHECK "))
    assert '"python"' in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_dockerfile_installs_the_package_without_dev_extras() -> None:
    installs = [
        ln for stage in dockerfile_stages() for ln in stage if re.search(r"pip install\b", ln)
    ]
    targets = [
        word
        for ln in installs
        for cmd in ln.split("&&")
        if "pip install" in cmd
        for word in shlex.split(cmd.split("pip install", 1)[1])
        if not word.startswith("-")
    ]
    assert "." in targets, "the package itself is never installed"
    extras = [t for t in targets if t.startswith(".[") or "[dev" in t]
    assert extras == [], f"installs extras {extras}"


def test_dockerfile_copies_what_the_build_context_sends() -> None:
    ignore = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copies = [ln for stage in dockerfile_stages() for ln in stage if ln.startswith("COPY ")]
    sources = [
        src
        for ln in copies
        if "--from=" not in ln
        for src in shlex.split(ln)[1:-1]
        if not src.startswith("--")
    ]
    assert {"pyproject.toml", "streamer"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
        hit = [p for p in ignore if fnmatch.fnmatch(src, p.rstrip("/"))]
        assert hit == [], f"COPY {src}, but .dockerignore excludes it ({hit})"


# --- the commands the manifests run -----------------------------------------------------------


def manifest_invocations() -> list[list[str]]:
    commands = []
    for service in streamer_services().values():
        command = service.get("command") or []
        entry = service.get("entrypoint")
        if isinstance(command, str):
            command = shlex.split(command)
        if entry is None:  # the image's ENTRYPOINT ["streamer"]
            commands.append([w for w in command if not w.startswith("-")])
        else:
            commands.extend(streamer_invocations(" ".join(command)))
    for file in ("deployment.yaml", "job-init.yaml", "api.yaml"):
        c = container(k8s_files()[file][0])
        if "command" in c:
            commands.extend(container_invocations(c))
        else:
            commands.append([w for w in c.get("args", []) if not w.startswith("-")])
    return commands


@pytest.mark.parametrize(
    "command", [["consume"], ["db", "migrate"], ["topics", "create"], ["serve"]]
)
def test_commands_used_by_the_manifests_exist(command: list[str]) -> None:
    assert command in manifest_invocations(), f"`streamer {' '.join(command)}` is not used"
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def test_every_command_in_the_manifests_is_a_cli_command() -> None:
    invocations = manifest_invocations()
    assert invocations
    for command in invocations:
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, f"streamer {' '.join(command)}: {result.output}"


# --- deploy/k8s -------------------------------------------------------------------------------


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    files = k8s_files()
    assert {
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "job-init.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "scaledobject.yaml",
        "servicemonitor.yaml",
        "kustomization.yaml",
        "api.yaml",
    } <= set(files)
    namespace = k8s("namespace.yaml", "Namespace")["metadata"]["name"]
    for name, docs in files.items():
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), name
            if doc["kind"] == "Kustomization":
                assert doc.get("namespace") == namespace
                continue
            assert doc["metadata"]["name"], name
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, f"{name}: {doc['kind']}"


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = k8s("kustomization.yaml", "Kustomization")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "listed twice"
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {"secret.example.yaml"}


def test_config_and_secret_keys_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config, secret = configmap_data(), secret_data()
    bad = [k for k in config if not valid_setting(k)]
    assert bad == [], f"configmap.yaml: not settings: {bad}"
    bad = [k for k in secret if not (valid_setting(k) or k.startswith("AWS_"))]
    assert bad == [], f"secret.example.yaml: not settings: {bad}"
    secretive = re.compile(r"DATABASE_URL|PASSWORD|SECRET|TOKEN|ACCESS_KEY")
    leaked = [k for k in config if secretive.search(k) or "SASL_USERNAME" in k]
    assert leaked == [], f"secrets in the ConfigMap: {leaked}"
    assert "STREAMER_DATABASE_URL" in secret
    assert {"STREAMER_KAFKA__SASL_USERNAME", "STREAMER_KAFKA__SASL_PASSWORD"} <= set(secret)
    real = [k for k, v in secret.items() if secretive.search(k) and "CHANGE-ME" not in v]
    assert real == [], f"secret.example.yaml must hold placeholders only: {real}"
    # The values load, and the pass-through properties are ones librdkafka knows.
    settings = settings_from(
        {k: v for k, v in {**config, **secret}.items() if k.startswith("STREAMER_")},
        monkeypatch,
    )
    assert_librdkafka_accepts(settings)


def test_deployment_probes_hit_the_health_server() -> None:
    deployment = k8s("deployment.yaml", "Deployment")
    c = container(deployment)
    declared = {p.get("name"): p["containerPort"] for p in c["ports"]}
    metrics_port = int(configured("metrics_port"))
    assert declared.get("metrics") == metrics_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        port = get["port"]
        assert port in declared or port in declared.values(), f"{probe} port {port} undeclared"
        assert declared.get(port, port) == metrics_port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_deployment_is_shaped_for_a_consumer_group() -> None:
    deployment = k8s("deployment.yaml", "Deployment")
    spec, c = pod_spec(deployment), container(deployment)
    assert deployment["spec"]["replicas"] == 3
    assert c.get("args", ["consume"]) == ["consume"] and "command" not in c
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > float(configured("shutdown_grace_s")), "SIGKILL before the batch finishes"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_pdb_and_monitor_select_the_consumer_pods() -> None:
    deployment = k8s("deployment.yaml", "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s("service.yaml", "Service")
    assert service["spec"]["clusterIP"] == "None", "not headless"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(deployment)["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] in port_names | {
        p["containerPort"] for p in container(deployment)["ports"]
    }
    pdb = k8s("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = k8s("servicemonitor.yaml", "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} <= set(service_ports)
    assert all(e.get("path", "/metrics") == "/metrics" for e in endpoints)


def test_autoscaling_follows_the_consumer_group_lag() -> None:
    scaled = k8s("scaledobject.yaml", "ScaledObject")
    deployment = k8s("deployment.yaml", "Deployment")
    config = configmap_data()
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = int(configured("topic_partitions"))
    assert scaled["spec"]["maxReplicaCount"] == partitions, "partitions cap parallelism"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= partitions
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    topics = {t["metadata"]["topic"] for t in triggers}
    assert topics == {configured("media_topic"), configured("product_topic")}
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {configured("group_id")}
    assert {t["metadata"]["bootstrapServers"] for t in triggers} == {
        config["STREAMER_KAFKA_BOOTSTRAP"]
    }
    assert {t["metadata"].get("offsetResetPolicy", "latest") for t in triggers} == {"earliest"}


def test_autoscaler_logs_in_to_kafka_like_the_consumer() -> None:
    config, secret = configmap_data(), secret_data()
    protocol = config.get("STREAMER_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT").upper()
    mechanism = config.get("STREAMER_KAFKA__SASL_MECHANISM", "GSSAPI").upper()
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
        "OAUTHBEARER": "oauthbearer",
        "GSSAPI": "gssapi",
    }
    auths = {
        d["metadata"]["name"]: d
        for d in k8s_files()["scaledobject.yaml"]
        if d["kind"] == "TriggerAuthentication"
    }
    deployment_secrets = {
        ref["secretRef"]["name"]
        for ref in container(k8s("deployment.yaml", "Deployment"))["envFrom"]
        if "secretRef" in ref
    }
    for trigger in k8s("scaledobject.yaml", "ScaledObject")["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert meta.get("tls", "disable") == ("enable" if protocol.endswith("SSL") else "disable")
        if not protocol.startswith("SASL"):
            assert meta.get("sasl", "none") == "none"
            continue
        assert meta.get("sasl") == keda_sasl[mechanism], f"broker wants {mechanism}: {meta}"
        auth = auths[trigger["authenticationRef"]["name"]]
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert {"username", "password"} <= set(refs)
        for ref in refs.values():
            assert ref["name"] in deployment_secrets, f"{ref['name']} is not the pods' Secret"
            assert ref["key"] in secret, f"Secret has no key {ref['key']}"


def test_init_job_and_deployment_share_image_and_configuration() -> None:
    deployment = container(k8s("deployment.yaml", "Deployment"))
    job = k8s("job-init.yaml", "Job")
    init = container(job)
    assert init["image"] == deployment["image"], "init and consumers from different releases"
    assert init["envFrom"] == deployment["envFrom"]
    assert {"configMapRef": {"name": k8s("configmap.yaml", "ConfigMap")["metadata"]["name"]}} in (
        deployment["envFrom"]
    )
    assert {"secretRef": {"name": k8s("secret.example.yaml", "Secret")["metadata"]["name"]}} in (
        deployment["envFrom"]
    )
    assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}
    assert container_invocations(init) == [
        ["db", "migrate"],
        ["topics", "create"],
    ]
    for c in (deployment, init):
        for var in c.get("env", []):
            assert valid_setting(var["name"]) or var["name"].startswith("AWS_"), var["name"]


def test_settings_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in sorted(setting_names()) if n not in readme and n != "STREAMER_KAFKA"]
    assert missing == [], f"settings missing from the README's configuration table: {missing}"


# --- the API (`streamer serve`) ---------------------------------------------------------------


def api_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from({k: v for k, v in env.items() if k.startswith("STREAMER_")}, monkeypatch)


def test_compose_api_serves_on_its_port_after_init(monkeypatch: pytest.MonkeyPatch) -> None:
    api = services()["api"]
    env = environment(api)
    assert api["command"] == ["serve"]
    settings = api_settings(env, monkeypatch)
    port = settings.api.api_port
    assert settings.api.api_host == "0.0.0.0", "in a container it must listen beyond loopback"
    assert settings.api.full_tokens(), "tokens come from the operator's .env"
    assert "${STREAMER_API_TOKENS:?" in str(compose()["services"]["api"]["environment"]), (
        "the token is required from outside, never written in the file"
    )
    assert f"{port}:{port}" in api["ports"]
    assert f"{port}/healthz" in " ".join(api["healthcheck"]["test"])
    deps = depends_on(api)
    assert deps["init"]["condition"] == "service_completed_successfully"
    assert duration_s(api["stop_grace_period"]) > settings.runtime.shutdown_grace_s
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamer-api")
    assert job["static_configs"][0]["targets"] == [f"api:{port}"]


def test_k8s_api_deployment_and_service(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = k8s("api.yaml", "Deployment")
    service = k8s("api.yaml", "Service")
    c = container(deployment)
    consumer = container(k8s("deployment.yaml", "Deployment"))
    assert c["args"] == ["serve"] and "command" not in c
    assert c["image"] == consumer["image"] and c["envFrom"] == consumer["envFrom"]
    env = {v["name"]: v["value"] for v in c["env"]}
    settings = api_settings({**configmap_data(), **secret_data(), **env}, monkeypatch)
    assert settings.api.api_host == "0.0.0.0"
    declared = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert declared["http"] == settings.api.api_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.api.api_port
    assert "STREAMER_API_TOKENS" in secret_data() and "STREAMER_API_TOKENS" not in configmap_data()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in declared
    consumer_labels = k8s("deployment.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        k8s("service.yaml", "Service")["spec"]["selector"],
        k8s("pdb.yaml", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= pod_labels.items(), "consumer objects select API pods"
        assert selector.items() <= consumer_labels.items()
    monitor = k8s("servicemonitor.yaml", "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert not monitor.items() <= service["metadata"]["labels"].items()
    spec = pod_spec(deployment)
    assert spec["terminationGracePeriodSeconds"] > float(configured("shutdown_grace_s"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_metrics_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry_with_every_metric().collect()
        if family.name.startswith("streamer_")
    }
    missing = sorted(n for n in names if f"| `{n}` |" not in readme)
    assert missing == [], f"metrics missing from the README's metrics reference: {missing}"
