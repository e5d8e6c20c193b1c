"""What the deploy checks share: the repo layout, promtool, and the metric names streamer exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.metrics import registry_with_every_metric

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamer.json"
# Schemas and CRDs taken from released artefacts (their source: schemas/SOURCES.yaml).
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The Kubernetes minor versions the manifests are validated against (README, "Kubernetes").
KUBERNETES_VERSIONS = tuple(f"1.{minor}" for minor in range(30, 38))

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exported_metric_names() -> set[str]:
    """Every series name a worker can expose, including the process collector's."""
    registry = registry_with_every_metric()
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:streamer|process)_[a-z0-9_]+)\b", expr))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; CI installs it (`make promtool`), so a missing one is a failure, not a skip."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `make promtool` (Debian package prometheus)")
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
