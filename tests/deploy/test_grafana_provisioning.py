"""The Grafana dashboard and provisioning files as the Grafana of docker-compose.yml takes them.

No Grafana runs here. The dashboard is read through ``grafana-foundation-sdk``, Grafana Labs'
model generated from the dashboard and panel schemas of the same Grafana release: a field the
model drops on a round trip is one that release's schema does not declare, and enum fields
must hold one of its values. Datasource references and template variables are resolved the
way Grafana resolves them; the provisioning files are checked against the fields Grafana's
provisioning code reads (``schemas/grafana``), since Grafana itself ignores a misspelt one.
"""

from __future__ import annotations

import copy
import enum
import functools
import importlib.metadata
import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from grafana_foundation_sdk.cog import plugins as grafana_plugins
from grafana_foundation_sdk.cog import runtime as grafana_runtime
from grafana_foundation_sdk.models import dashboard as grafana_dashboard

from tests.deploy.support import DASHBOARD, DEPLOY, ROOT, SCHEMAS

pytestmark = pytest.mark.deploy

GRAFANA_VERSION = "11.3.0"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

# Query variables carry `definition` (the query as the variable editor shows it): Grafana's
# frontend writes and reads it, though the 11.3 schema does not declare it.
UNDECLARED_BUT_READ = {"definition"}

# Grafana's global variables a dashboard may use without defining them, and `$__all`, the
# value of a variable's "All" option.
GRAFANA_GLOBALS = {
    "__all",
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__rate_interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
    "__timezone",
}
BUILT_IN_DATASOURCES = {("grafana", "-- Grafana --")}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


@functools.cache
def _register_panels() -> None:
    grafana_plugins.register_default_plugins()


def grafana_model(doc: dict[str, Any]) -> grafana_dashboard.Dashboard:
    _register_panels()
    return grafana_dashboard.Dashboard.from_json(doc)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.to_json()))


def round_trip_losses(doc: dict[str, Any]) -> list[str]:
    """Paths of fields the Grafana model dropped or changed."""
    kept = _plain(grafana_model(doc).to_json())
    losses: list[str] = []

    def compare(ours: Any, theirs: Any, path: str) -> None:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for key, value in ours.items():
                if key not in theirs:
                    if not (key in UNDECLARED_BUT_READ and path.startswith("/templating")):
                        losses.append(f"{path}/{key} is not in Grafana {GRAFANA_VERSION}'s schema")
                else:
                    compare(value, theirs[key], f"{path}/{key}")
        elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
            for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                compare(a, b, f"{path}[{index}]")
        elif ours != theirs:
            losses.append(f"{path}: {ours!r} reads back as {theirs!r}")

    compare(doc, kept, "")
    return losses


def _enums(annotation: Any) -> list[type[enum.Enum]]:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [annotation]
    return [e for arg in typing.get_args(annotation) for e in _enums(arg)]


def enum_errors(node: Any, path: str = "") -> Iterator[str]:
    """Every enum-typed field of the model holding a value its enum lacks."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from enum_errors(item, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from enum_errors(item, f"{path}.{key}")
    elif hasattr(node, "__dict__") and not isinstance(node, enum.Enum):
        hints = typing.get_type_hints(type(node))
        for name, value in vars(node).items():
            allowed = _enums(hints.get(name))
            if allowed and isinstance(value, str | int) and not isinstance(value, enum.Enum):
                values = {member.value for e in allowed for member in e}
                if value not in values:
                    yield f"{path}.{name}: {value!r} is not one of {sorted(map(str, values))}"
            yield from enum_errors(value, f"{path}.{name}")


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def provisioned_datasources() -> dict[str, str]:
    """uid -> plugin type of every data source the provisioning files create."""
    found = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for ds in yaml.safe_load(path.read_text()).get("datasources", []):
            found[ds["uid"]] = ds["type"]
    return found


def datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}/{key}", value
            else:
                yield from datasource_refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from datasource_refs(item, f"{path}[{index}]")


def datasource_errors(doc: dict[str, Any]) -> list[str]:
    variables = {
        v["name"]: v["query"] for v in doc["templating"]["list"] if v["type"] == "datasource"
    }
    provisioned = provisioned_datasources()
    errors = []
    for path, ref in datasource_refs(doc):
        if not isinstance(ref, dict) or "uid" not in ref:
            errors.append(f"{path}: {ref!r} is not a {{type, uid}} reference")
            continue
        uid, kind = ref["uid"], ref.get("type")
        variable = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
        if (kind, uid) in BUILT_IN_DATASOURCES:
            continue
        if variable:
            name = variable.group(1) or variable.group(2)
            if name not in variables:
                errors.append(f"{path}: {uid} is not a datasource variable")
            elif kind not in (None, variables[name]):
                errors.append(f"{path}: type {kind} but ${name} picks {variables[name]}")
        elif uid not in provisioned:
            errors.append(f"{path}: no provisioned data source has uid {uid!r}")
        elif kind not in (None, provisioned[uid]):
            errors.append(f"{path}: type {kind} but data source {uid} is {provisioned[uid]}")
    for name, plugin in variables.items():
        if plugin not in provisioned.values():
            errors.append(f"${name} picks a {plugin} data source and none is provisioned")
    return errors


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def undefined_variables(doc: dict[str, Any]) -> set[str]:
    defined = {v["name"] for v in doc["templating"]["list"]} | GRAFANA_GLOBALS
    used = {
        next(g for g in match.groups() if g)
        for text in strings(doc)
        for match in _VARIABLE.finditer(text)
    }
    return used - defined


# --- the dashboard ----------------------------------------------------------------------------


def test_the_model_is_of_the_grafana_that_compose_runs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["grafana"]["image"] == f"grafana/grafana:{GRAFANA_VERSION}"
    sdk = importlib.metadata.version("grafana-foundation-sdk")
    assert sdk.endswith(f"!{GRAFANA_VERSION}"), f"grafana-foundation-sdk {sdk}"


def test_schema_version_is_the_one_grafana_writes() -> None:
    """An older one is migrated on every load; a newer one is unknown to this Grafana."""
    assert dashboard()["schemaVersion"] == grafana_dashboard.Dashboard().schema_version


def test_every_field_is_one_grafana_declares() -> None:
    losses = round_trip_losses(dashboard())
    assert losses == [], "\n".join(losses)


def test_enum_fields_hold_values_grafana_knows() -> None:
    errors = list(enum_errors(grafana_model(dashboard())))
    assert errors == [], "\n".join(errors)


def test_panel_types_are_panels_grafana_ships() -> None:
    _register_panels()
    known = set(grafana_runtime.Runtime().panelcfg_variants) | {"row"}
    unknown = {p["type"] for p in panels(dashboard())} - known
    assert unknown == set(), f"not Grafana {GRAFANA_VERSION} panels: {unknown}"


def test_dashboard_has_what_provisioning_requires() -> None:
    doc = dashboard()
    assert doc["title"].strip(), "Grafana refuses to provision a dashboard without a title"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", doc["uid"]), doc["uid"]
    assert "id" not in doc or doc["id"] is None, "a provisioned dashboard takes its id from Grafana"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(doc):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(refs), f"{panel['title']}: refIds {refs}"


def test_datasource_references_resolve() -> None:
    errors = datasource_errors(dashboard())
    assert errors == [], "\n".join(errors)


def test_every_variable_used_is_defined() -> None:
    assert undefined_variables(dashboard()) == set()


# --- provisioning -----------------------------------------------------------------------------


@functools.cache
def provisioning_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "grafana" / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def provisioning_errors(kind: str, doc: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in provisioning_validator(kind).iter_errors(doc)
    ]


PROVISIONING_FILES = {"dashboards": "dashboard-providers", "datasources": "datasources"}


def provisioning_files() -> list[tuple[str, Path]]:
    found = [
        (kind, path)
        for folder, kind in PROVISIONING_FILES.items()
        for path in sorted((PROVISIONING / folder).glob("*.y*ml"))
    ]
    assert {kind for kind, _ in found} == set(PROVISIONING_FILES.values())
    return found


def test_provisioning_files_use_only_fields_grafana_reads() -> None:
    errors = [
        f"{path.relative_to(ROOT)}: {e}"
        for kind, path in provisioning_files()
        for e in provisioning_errors(kind, yaml.safe_load(path.read_text()))
    ]
    assert errors == [], "\n".join(errors)


def test_one_default_data_source_and_unique_uids() -> None:
    sources = [
        ds
        for path in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert sum(bool(ds.get("isDefault")) for ds in sources) == 1
    uids = [ds["uid"] for ds in sources]
    assert len(uids) == len(set(uids))


def test_dashboard_provider_reads_where_compose_mounts_the_dashboard() -> None:
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"])
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    config = yaml.safe_load((PROVISIONING / "dashboards" / "streamer.yml").read_text())
    for provider in config["providers"]:
        source = mounts.get(provider["options"]["path"])
        assert source is not None, f"{provider['options']['path']} is not mounted"
        assert (ROOT / source / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, name = home.rpartition("/")
    assert (ROOT / mounts[folder] / name).is_file(), home


# --- the checks have teeth --------------------------------------------------------------------


def test_the_dashboard_checks_catch_mistakes() -> None:
    doc = dashboard()
    stat = next(p for p in doc["panels"] if p["type"] == "stat")
    timeline = next(p for p in doc["panels"] if p["type"] == "state-timeline")

    broken = copy.deepcopy(doc)
    next(p for p in broken["panels"] if p["id"] == stat["id"])["options"]["colourMode"] = "value"
    assert any("colourMode" in loss for loss in round_trip_losses(broken))

    broken = copy.deepcopy(doc)
    target = next(p for p in broken["panels"] if p["id"] == timeline["id"])
    target["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    assert any("'absolut'" in e for e in enum_errors(grafana_model(broken)))

    broken = copy.deepcopy(doc)
    next(p for p in broken["panels"] if p["id"] == stat["id"])["datasource"]["uid"] = "${ds}"
    assert any("${ds} is not a datasource variable" in e for e in datasource_errors(broken))

    broken = copy.deepcopy(doc)
    next(p for p in broken["panels"] if p["id"] == stat["id"])["title"] += " on $cluster"
    assert undefined_variables(broken) == {"cluster"}


def test_the_provisioning_check_catches_a_misspelt_field() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "streamer.yml").read_text())
    config["providers"][0]["allowUIUpdates"] = config["providers"][0].pop("allowUiUpdates")
    assert any("allowUIUpdates" in e for e in provisioning_errors("dashboard-providers", config))
