"""The Maven cache of the dev tools: a finished fetch is reused without Maven, a missing Java or
Maven is named, never a traceback from deep inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.dev import maven
from streamer.dev.apicurio.distribution import ApicurioUnavailable, min_java

pytestmark = pytest.mark.unit


def fetch_9_9_9(tmp_path: Path) -> Path:
    return maven.fetch(
        name="apicurio",
        version="9.9.9",
        subdir="app",
        program="Apicurio Registry",
        pom=tmp_path / "pom.xml",
        goal=["dependency:unpack-dependencies"],
        properties={},
        error=ApicurioUnavailable,
    )


def test_a_finished_fetch_is_reused_without_running_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")  # no mvn: it must not be needed
    root = tmp_path / "streamer" / "apicurio" / "9.9.9"
    (root / "app").mkdir(parents=True)
    (root / ".complete").write_text("9.9.9")
    got = fetch_9_9_9(tmp_path)
    assert got == root / "app"


def test_an_unfinished_fetch_without_maven_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    (tmp_path / "streamer" / "apicurio" / "9.9.9" / "app").mkdir(parents=True)  # no stamp
    with pytest.raises(ApicurioUnavailable, match=r"Apicurio Registry 9\.9\.9 .* no `mvn`"):
        fetch_9_9_9(tmp_path)


def test_a_java_too_old_for_the_program_is_named() -> None:
    with pytest.raises(ApicurioUnavailable) as info:
        maven.java_executable(99, program="Apicurio Registry 99", error=ApicurioUnavailable)
    assert "Apicurio Registry 99 needs Java 99 or newer" in info.value.message
    assert "JAVA_HOME" in info.value.message


def test_apicurio_3_needs_java_21_and_2_6_runs_on_17() -> None:
    assert min_java("3.3.3") == 21 and min_java("2.6.13.Final") == 17
