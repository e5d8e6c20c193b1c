"""Apicurio Registry's runnable layout, fetched by Maven into a user cache on first use.

``pom.xml`` beside this module names the ``all`` tar.gz that Apicurio publishes for its app
module on Maven Central, and ``mvn dependency:unpack-dependencies`` unpacks it into
``$XDG_CACHE_HOME/streamer/apicurio/<version>/app`` (``streamer.dev.maven``). Two lines are
published that way: 2.6.x, a runner jar that runs on Java 17, and 3.x, a Quarkus fast-jar
(``quarkus-run.jar``) compiled for Java 21.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streamer.dev import maven
from streamer.errors import StreamerError

__all__ = ["DEFAULT_APICURIO_VERSION", "ApicurioDistribution", "ApicurioUnavailable"]

# The newest 2.6.x: it runs on the Java 17 that `make test` installs; 3.x needs Java 21.
DEFAULT_APICURIO_VERSION = "2.6.13.Final"


class ApicurioUnavailable(StreamerError):
    """Apicurio cannot be run here: Java or Maven is missing, Maven could not fetch it, or
    it did not start."""

    reason = "apicurio_unavailable"


def min_java(version: str) -> int:
    """3.x is compiled for Java 21 (class file 65); 2.x runs on 17."""
    return 21 if int(version.split(".")[0]) >= 3 else 17


@dataclass(frozen=True)
class ApicurioDistribution:
    """One Apicurio version's runnable layout on this machine."""

    version: str
    home: Path

    @property
    def jar(self) -> Path:
        """What ``java -jar`` runs: 3.x's ``quarkus-run.jar``, 2.x's ``*-runner.jar``."""
        fast = self.home / "quarkus-run.jar"
        if fast.exists():
            return fast
        runners = sorted(self.home.glob("*-runner.jar"))
        if not runners:
            raise ApicurioUnavailable(
                f"no quarkus-run.jar or *-runner.jar in {self.home}: not a runnable Apicurio "
                f"{self.version} layout"
            )
        return runners[0]

    def java(self) -> str:
        return maven.java_executable(
            min_java(self.version),
            program=f"Apicurio Registry {self.version}",
            error=ApicurioUnavailable,
        )

    @classmethod
    def ensure(cls, version: str = DEFAULT_APICURIO_VERSION) -> ApicurioDistribution:
        """The layout of ``version``, fetched by Maven when the cache does not hold it yet."""
        dist = cls(version, Path())
        dist.java()
        home = maven.fetch(
            name="apicurio",
            version=version,
            subdir="app",
            program="Apicurio Registry",
            pom=Path(str(resources.files(__package__).joinpath("pom.xml"))),
            goal=["dependency:unpack-dependencies", "-DexcludeTransitive=true"],
            properties={"apicurio.version": version},
            error=ApicurioUnavailable,
        )
        return cls(version, home)
