"""Custom resources checked as the API server checks them: against the CRD's own schema and rules.

A CRD carries an OpenAPI v3 *structural* schema, not JSON Schema, plus CEL rules. Three
differences matter for validating offline:

- ``kubectl apply`` asks for strict field validation (the default since Kubernetes 1.27), so a
  field the schema does not declare is an error, not silently pruned. JSON Schema allows extra
  fields unless told otherwise, so every object schema that lists its properties gets
  ``additionalProperties: false`` unless it says ``x-kubernetes-preserve-unknown-fields``.
- ``nullable: true`` and the ``int32``/``int64`` formats are OpenAPI's, unknown to JSON Schema.
- ``x-kubernetes-validations`` holds CEL rules the API server evaluates at admission; they are
  evaluated here with cel-python. Transition rules (``oldSelf``) only apply to updates: skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from celpy import Environment
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

FORMATS = jsonschema.FormatChecker()


def _in_range(name: str) -> Callable[[object], bool]:
    low, high = _INT_RANGES[name]
    return lambda value: not isinstance(value, int) or low <= value <= high


for _name in _INT_RANGES:
    FORMATS.checks(_name)(_in_range(_name))


def as_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural schema as strict JSON Schema (see the module docstring)."""
    schema = dict(node)
    if "properties" in schema:
        schema["properties"] = {k: as_json_schema(v) for k, v in schema["properties"].items()}
    for key in ("items", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = as_json_schema(schema[key])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = as_json_schema(schema["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [as_json_schema(s) for s in schema[key]]
    if schema.pop("x-kubernetes-int-or-string", False):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@dataclass(frozen=True)
class CustomResourceVersion:
    """One served version of a CRD: what ``apiVersion``/``kind`` it takes and how to check it."""

    api_version: str
    kind: str
    deprecated: bool
    structural: dict[str, Any]

    @functools.cached_property
    def validator(self) -> jsonschema.Draft7Validator:
        return jsonschema.Draft7Validator(as_json_schema(self.structural), format_checker=FORMATS)

    def schema_errors(self, doc: dict[str, Any]) -> list[str]:
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(self.validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
        ]

    def rule_errors(self, doc: dict[str, Any]) -> list[str]:
        return list(_cel_violations(self.structural, doc, ""))

    def errors(self, doc: dict[str, Any]) -> list[str]:
        return self.schema_errors(doc) + self.rule_errors(doc)


def _cel_violations(schema: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        env = Environment()
        try:
            program = env.program(env.compile(rule["rule"]))
            result = program.evaluate({"self": json_to_cel(value)})
        except (CELParseError, CELEvalError) as exc:
            yield f"{path or '<root>'}: CEL rule {rule['rule']!r} could not be evaluated: {exc}"
            continue
        if not (isinstance(result, BoolType) and bool(result)):
            yield f"{path or '<root>'}: {rule.get('message') or rule['rule']}"
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child = schema.get("properties", {}).get(key, extra)
            if isinstance(child, dict):
                yield from _cel_violations(child, item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _cel_violations(schema["items"], item, f"{path}[{index}]")


def load_crds(directory: Path) -> dict[tuple[str, str], CustomResourceVersion]:
    """Every served version of every CRD in ``directory``, by (apiVersion, kind)."""
    found: dict[tuple[str, str], CustomResourceVersion] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                found[(api_version, spec["names"]["kind"])] = CustomResourceVersion(
                    api_version=api_version,
                    kind=spec["names"]["kind"],
                    deprecated=bool(version.get("deprecated", False)),
                    structural=version["schema"]["openAPIV3Schema"],
                )
    assert found, f"no CustomResourceDefinition in {directory}"
    return found
