"""deploy/k8s validated as a cluster would take it, offline.

Built-in kinds against the Kubernetes API schemas of every supported minor version
(``kubernetes-validate``, strict: an unknown field fails, as ``kubectl apply`` rejects it);
KEDA's and the Prometheus Operator's kinds against the CRDs of their releases kept in
``schemas/``, CEL rules included; the kustomization by building it with kustomize, whose
output is checked the same way.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.crd import CustomResourceVersion, load_crds
from tests.deploy.support import DEPLOY, KUBERNETES_VERSIONS, ROOT, SCHEMAS

pytestmark = pytest.mark.deploy

K8S = DEPLOY / "k8s"

# Each operator's oldest and newest release the manifests are checked against; by KEDA's own
# matrix 2.16 is tested on Kubernetes 1.29-1.31 and 2.21 on 1.34-1.36.
OPERATOR_RELEASES = {
    "KEDA 2.16.1": SCHEMAS / "keda-v2.16.1",
    "KEDA 2.21.0": SCHEMAS / "keda-v2.21.0",
    "Prometheus Operator 0.85.0": SCHEMAS / "prometheus-operator-v0.85.0",
}


@functools.cache
def crds(release: str) -> dict[tuple[str, str], CustomResourceVersion]:
    return load_crds(OPERATOR_RELEASES[release])


def custom_groups() -> set[str]:
    return {api.split("/")[0] for release in OPERATOR_RELEASES for api, _ in crds(release)}


def is_custom(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0] in custom_groups()


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every object in deploy/k8s (the kustomization is kustomize's, not the cluster's)."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}: {doc['kind']}/{doc['metadata']['name']}", doc))
    assert len(found) >= 14
    return found


def api_errors(doc: dict[str, Any], version: str) -> list[str]:
    """What the Kubernetes API of ``version`` says about a built-in object."""
    try:
        used = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{doc['apiVersion']} {doc['kind']} is not served by Kubernetes {version}"]
    assert used == version, f"validated against {used}, not {version}"
    return []


def crd_errors(doc: dict[str, Any], release: str) -> list[str]:
    version = crds(release).get((doc["apiVersion"], doc["kind"]))
    if version is None:
        return [f"{release} serves no {doc['apiVersion']} {doc['kind']}"]
    deprecated = [f"{doc['apiVersion']} is deprecated in {release}"] if version.deprecated else []
    return deprecated + version.errors(doc)


def releases_for(doc: dict[str, Any]) -> list[str]:
    group = doc["apiVersion"].split("/")[0]
    return [r for r in OPERATOR_RELEASES if any(api.startswith(group + "/") for api, _ in crds(r))]


def object_errors(docs: list[tuple[str, dict[str, Any]]], version: str) -> list[str]:
    errors = []
    for name, doc in docs:
        if is_custom(doc):
            errors += [f"{name} ({r}): {e}" for r in releases_for(doc) for e in crd_errors(doc, r)]
        else:
            errors += [f"{name}: {e}" for e in api_errors(doc, version)]
    return errors


# --- the manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_match_the_kubernetes_api(version: str) -> None:
    docs = [(name, doc) for name, doc in manifests() if not is_custom(doc)]
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Job", "Service", "ConfigMap", "Secret"}
    errors = [f"{name}: {e}" for name, doc in docs for e in api_errors(doc, version)]
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("release", OPERATOR_RELEASES)
def test_custom_resources_match_the_operator_crds(release: str) -> None:
    docs = [(name, doc) for name, doc in manifests() if release in releases_for(doc)]
    assert docs, f"no manifest is a {release} resource"
    errors = [f"{name}: {e}" for name, doc in docs for e in crd_errors(doc, release)]
    assert errors == [], "\n".join(errors)


def test_every_custom_resource_has_the_crds_of_its_operator() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in manifests() if is_custom(d)}
    assert kinds == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }
    for _, doc in manifests():
        if is_custom(doc):
            assert releases_for(doc), f"no vendored CRD for {doc['apiVersion']} {doc['kind']}"


# --- the kustomization ------------------------------------------------------------------------


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize`` (kustomize built into kubectl), else a standalone ``kustomize``."""
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(directory)]
    elif standalone := shutil.which("kustomize"):
        command = [standalone, "build", str(directory)]
    else:
        pytest.fail("neither kubectl nor kustomize is installed: run `make kustomize`")
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def rendered() -> tuple[tuple[str, dict[str, Any]], ...]:
    result = kustomize(K8S)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return tuple((f"{d['kind']}/{d['metadata']['name']}", d) for d in docs)


def test_kustomization_renders_every_listed_object() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = {
        (d["kind"], d["metadata"]["name"])
        for name in listed
        for d in yaml.safe_load_all((K8S / name).read_text())
        if d
    }
    assert {(d["kind"], d["metadata"]["name"]) for _, d in rendered()} == expected
    for name, doc in rendered():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "streamer", name
    images = {
        c["image"]
        for _, d in rendered()
        if d["kind"] in {"Deployment", "Job"}
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    new_tag = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"][0]["newTag"]
    assert images == {f"ghcr.io/example/streamer:{new_tag}"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kustomize_output_is_valid(version: str) -> None:
    errors = object_errors(list(rendered()), version)
    assert errors == [], "\n".join(errors)


# --- the checks have teeth --------------------------------------------------------------------


def _one(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in manifests() if d["kind"] == kind))


def test_an_unknown_or_mistyped_field_fails_the_api_check() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    assert "terminationGracePeriod" in " ".join(api_errors(deployment, KUBERNETES_VERSIONS[0]))
    deployment = _one("Deployment")
    deployment["spec"]["replicas"] = "3"
    assert "spec.replicas" in " ".join(api_errors(deployment, KUBERNETES_VERSIONS[-1]))


def test_a_field_newer_than_a_supported_version_fails_there() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod["securityContext"]["supplementalGroupsPolicy"] = "Strict"  # in the API since 1.31
    assert "supplementalGroupsPolicy" in " ".join(api_errors(deployment, "1.30"))
    assert api_errors(deployment, "1.31") == []


def test_a_scaled_object_breaking_its_crd_fails() -> None:
    scaled = _one("ScaledObject")
    scaled["spec"]["minReplicaCount"] = 13  # above maxReplicaCount (12): KEDA's CEL rule
    assert any(
        "minReplicaCount must be less than or equal to maxReplicaCount" in e
        for e in crd_errors(scaled, "KEDA 2.21.0")
    )
    scaled = _one("ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20000  # metadata takes strings
    assert any("lagThreshold" in e for e in crd_errors(scaled, "KEDA 2.16.1"))


def test_a_service_monitor_with_an_unknown_field_fails() -> None:
    monitor = _one("ServiceMonitor")
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    assert any(
        "'endpoint' was unexpected" in e for e in crd_errors(monitor, "Prometheus Operator 0.85.0")
    )


def test_a_broken_kustomization_fails_to_build(tmp_path: Path) -> None:
    for path in K8S.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    kustomization = tmp_path / "kustomization.yaml"
    kustomization.write_text(re.sub(r"^images:", "image:", kustomization.read_text(), flags=re.M))
    result = kustomize(tmp_path)
    assert result.returncode != 0 and "image" in result.stderr


def test_readme_names_the_supported_kubernetes_versions() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"Kubernetes {KUBERNETES_VERSIONS[0]} to {KUBERNETES_VERSIONS[-1]}" in readme
