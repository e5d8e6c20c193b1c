"""Apache Kafka's jars, fetched by Maven into a user cache on first use.

``pom.xml`` beside this module names the broker, the tools and a log4j2 binding, and
``mvn dependency:copy-dependencies`` copies them with everything they need into
``$XDG_CACHE_HOME/streamer/kafka/<version>/lib`` (``streamer.dev.maven``: a lock for
concurrent sessions, a stamp for a finished copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streamer.dev import maven
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


class KafkaUnavailable(StreamerError):
    """Kafka cannot be run here: Java or Maven is missing, or Maven could not fetch the jars."""

    reason = "kafka_unavailable"


def java_executable() -> str:
    """The ``java`` to run Kafka with (17+): ``$JAVA_HOME/bin/java``, else the one on PATH."""
    return maven.java_executable(17, program="Apache Kafka", error=KafkaUnavailable)


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
        lib = maven.fetch(
            name="kafka",
            version=version,
            subdir="lib",
            program="Apache Kafka",
            pom=Path(str(resources.files(__package__).joinpath("pom.xml"))),
            goal=["dependency:copy-dependencies", "-DincludeScope=runtime"],
            properties={
                "kafka.version": version,
                "log4j.version": _LOG4J[version.split(".")[0]],
            },
            error=KafkaUnavailable,
            finish=_drop_conflicting_bindings,
        )
        return cls(version, lib)


def _drop_conflicting_bindings(lib: Path) -> None:
    """Kafka 3.x depends on reload4j's slf4j binding; two bindings make slf4j pick one at
    random, so keep only log4j2's."""
    for jar in lib.glob("slf4j-reload4j-*.jar"):
        jar.unlink()
