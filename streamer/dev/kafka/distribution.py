"""Apache Kafka's jars, fetched by Maven into a user cache on first use.

No tarball and no download script: ``pom.xml`` beside this module names the broker, the
tools and a log4j2 binding, and ``mvn dependency:copy-dependencies`` copies them with
everything they need into ``$XDG_CACHE_HOME/streamer/kafka/<version>/lib``. A file lock
lets concurrent test sessions share one cache; a finished copy is marked by a stamp file,
so a copy cut short is made again instead of half used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streamer.errors import StreamerError

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "KafkaDistribution",
    "KafkaUnavailable",
    "java_executable",
]

# The newest 4.x line whose broker runs on Java 17 (4.2 and later need a newer Java for
# tools; FIELD-NOTES.md).
DEFAULT_KAFKA_VERSION = "4.1.1"
_LOG4J = {"3": "2.24.3", "4": "2.24.3"}
_STAMP = ".complete"


class KafkaUnavailable(StreamerError):
    """Kafka cannot be run here: Java or Maven is missing, or Maven could not fetch the jars."""

    reason = "kafka_unavailable"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamer" / "kafka"


def java_executable() -> str:
    """The ``java`` to run Kafka with: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailable(
            "Apache Kafka needs Java 17 or newer, and no `java` was found (set JAVA_HOME or "
            "install a JDK, e.g. Debian's openjdk-17-jre-headless)"
        )
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class KafkaDistribution:
    """One Kafka version's jars on this machine."""

    version: str
    lib: Path

    @property
    def classpath(self) -> str:
        return str(self.lib / "*")

    @property
    def log4j_config(self) -> Path:
        return Path(str(resources.files(__package__).joinpath("log4j2.properties")))

    @property
    def tools_log4j_config(self) -> Path:
        return Path(str(resources.files(__package__).joinpath("log4j2-tools.properties")))

    @classmethod
    def ensure(cls, version: str = DEFAULT_KAFKA_VERSION) -> KafkaDistribution:
        """The jars of ``version``, fetched by Maven when the cache does not hold them yet."""
        java_executable()
        root = cache_root() / version
        lib = root / "lib"
        if (root / _STAMP).exists():
            return cls(version, lib)
        with _locked(root.parent / f".{version}.lock"):
            if (root / _STAMP).exists():
                return cls(version, lib)
            mvn = shutil.which("mvn")
            if mvn is None:
                raise KafkaUnavailable(
                    f"Apache Kafka {version} is fetched from Maven Central on first use, and no "
                    "`mvn` was found (install Maven 3.8+, e.g. Debian's maven package)"
                )
            if lib.exists():
                shutil.rmtree(lib)
            pom = Path(str(resources.files(__package__).joinpath("pom.xml")))
            argv = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                f"-Dkafka.version={version}",
                f"-Dlog4j.version={_LOG4J[version.split('.')[0]]}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={lib}",
            ]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise KafkaUnavailable(
                    f"Maven could not fetch Apache Kafka {version} from Maven Central "
                    f"(`{' '.join(argv[:2])} … dependency:copy-dependencies` exited "
                    f"{done.returncode}):\n{tail}"
                )
            _drop_conflicting_bindings(lib)
            (root / _STAMP).write_text(version)
        return cls(version, lib)


def _drop_conflicting_bindings(lib: Path) -> None:
    """Kafka 3.x depends on reload4j's slf4j binding; two bindings make slf4j pick one at
    random, so keep only log4j2's."""
    for jar in lib.glob("slf4j-reload4j-*.jar"):
        jar.unlink()
