"""Java programs of the development stack, fetched by Maven into a user cache on first use.

No tarball and no download script: a ``pom.xml`` of ours (packaging ``pom``, nothing built)
names what a program needs, and one Maven goal on it (``dependency:copy-dependencies`` for
jars, ``dependency:unpack-dependencies`` for a published distribution) puts it under
``$XDG_CACHE_HOME/streamer/<name>/<version>/``. A file lock lets concurrent test sessions
share one cache; a finished fetch is marked by a stamp file, so one cut short is made again
instead of half used. Apache Kafka and Apicurio Registry are fetched this way.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from streamer.errors import StreamerError

__all__ = ["cache_root", "fetch", "java_executable", "java_major"]

_STAMP = ".complete"
_VERSION = re.compile(r'version "(?:1\.)?(\d+)')
# Where Debian and the Temurin packages put their JDKs, for a program that needs a newer
# Java than the one on PATH.
_JVM_DIRS = (Path("/usr/lib/jvm"),)


def cache_root(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamer" / name


@functools.lru_cache(maxsize=16)
def java_major(java: str) -> int | None:
    """The feature release of a ``java`` (17, 21, 25), or None when it does not answer."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(done.stderr + done.stdout)
    return int(match.group(1)) if match else None


def _candidates() -> Iterator[str]:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        yield str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is not None:
        yield found
    for root in _JVM_DIRS:
        if root.is_dir():
            for jdk in sorted(root.iterdir()):
                if (jdk / "bin" / "java").exists():
                    yield str(jdk / "bin" / "java")


def java_executable(min_major: int, *, program: str, error: Callable[[str], StreamerError]) -> str:
    """A ``java`` of at least ``min_major``: ``$JAVA_HOME``'s, else the one on PATH, else a
    JDK under /usr/lib/jvm; ``error`` (a message naming what is missing) when none is."""
    seen: list[str] = []
    for java in dict.fromkeys(_candidates()):
        major = java_major(java)
        if major is not None and major >= min_major:
            return java
        seen.append(f"{java} is Java {major if major is not None else '?'}")
    found = "; ".join(seen) if seen else "no `java` was found"
    raise error(
        f"{program} needs Java {min_major} or newer ({found}): set JAVA_HOME or install a "
        f"JDK {min_major}+"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(
    *,
    name: str,
    version: str,
    subdir: str,
    program: str,
    pom: Path,
    goal: Sequence[str],
    properties: Mapping[str, str],
    error: Callable[[str], StreamerError],
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """``<cache>/<name>/<version>/<subdir>``, made by ``mvn -f POM GOAL
    -DoutputDirectory=…`` unless a finished one is there; ``finish`` tidies what Maven wrote
    before the stamp is set."""
    root = cache_root(name) / version
    out = root / subdir
    if (root / _STAMP).exists():
        return out
    with _locked(root.parent / f".{version}.lock"):
        if (root / _STAMP).exists():
            return out
        mvn = shutil.which("mvn")
        if mvn is None:
            raise error(
                f"{program} {version} is fetched from Maven Central on first use, and no "
                "`mvn` was found (install Maven 3.8+, e.g. Debian's maven package)"
            )
        if out.exists():
            shutil.rmtree(out)
        argv = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            *(f"-D{key}={value}" for key, value in properties.items()),
            *goal,
            f"-DoutputDirectory={out}",
            # unpack's markers go to target/ beside the pom otherwise: into the package
            f"-DmarkersDirectory={root / 'markers'}",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise error(
                f"Maven could not fetch {program} {version} from Maven Central "
                f"(`mvn -f {pom.name} {' '.join(goal)}` exited {done.returncode}):\n{tail}"
            )
        if finish is not None:
            finish(out)
        (root / _STAMP).write_text(version)
    return out
