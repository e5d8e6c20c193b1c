"""docker-compose.yml against the Compose specification's JSON schema, as ``docker compose`` checks it.

The schema is the one compose-go (the loader of ``docker compose``) embeds, kept in
``schemas/``. compose-go validates after interpolation; this file interpolates only
environment values, which the schema takes as strings either way.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import ROOT, SCHEMAS

pytestmark = pytest.mark.deploy

COMPOSE = ROOT / "docker-compose.yml"
SPEC = SCHEMAS / "compose-go-v2.17.0" / "compose-spec.json"


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SPEC.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator().iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    found = errors(compose())
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("mistake", "where"),
    [
        (lambda d: d["services"]["consumer"].update(stop_grace_periods="40s"), "consumer"),
        (lambda d: d["services"]["kafka"].update(ports="19092:19092"), "ports"),
        (
            lambda d: d["services"]["init"]["depends_on"]["kafka"].update(condition="healthy"),
            "condition",
        ),
        (lambda d: d.update(volume={"x": None}), "volume"),
    ],
    ids=["unknown-service-key", "mistyped-value", "unknown-condition", "unknown-top-level-key"],
)
def test_the_schema_check_catches_mistakes(mistake: Any, where: str) -> None:
    doc = copy.deepcopy(compose())
    mistake(doc)
    found = errors(doc)
    assert found and any(where in e for e in found), found
