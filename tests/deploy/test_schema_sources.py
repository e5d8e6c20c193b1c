"""The schemas the deploy checks use are what SOURCES.yaml says they are, and nothing else."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tests.deploy.support import SCHEMAS

pytestmark = pytest.mark.deploy

SOURCES = yaml.safe_load((SCHEMAS / "SOURCES.yaml").read_text())


def test_every_schema_file_has_a_recorded_source() -> None:
    recorded = {e["file"] for e in SOURCES["copied"]} | {e["file"] for e in SOURCES["written"]}
    present = {
        str(p.relative_to(SCHEMAS))
        for p in SCHEMAS.rglob("*")
        if p.is_file() and p.name != "SOURCES.yaml"
    }
    assert present == recorded


@pytest.mark.parametrize("entry", SOURCES["copied"], ids=lambda e: e["file"])
def test_copied_files_are_unchanged_from_their_release(entry: dict[str, str]) -> None:
    digest = hashlib.sha256((SCHEMAS / entry["file"]).read_bytes()).hexdigest()
    assert digest == entry["sha256"], f"{entry['file']} differs from {entry['module']}"
    assert entry["module"].endswith("@" + entry["release"])
    assert entry["release"].lstrip("v") in entry["file"]
