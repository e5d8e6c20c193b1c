"""The base of every settings section, and how a section is loaded at the edge.

Settings are split by concern (Kafka, PostgreSQL, S3, the runtime, each job): each
section is its own frozen class beside the code it configures, and components take
only the sections they need. Every section reads the same flat ``STREAMER_*``
names, from a flag, the environment, or the ``dev.env`` file that ``streamer dev
up`` writes (in that order of precedence); a bad value fails at start with a
message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from streamer.errors import ConfigError

__all__ = ["NonBlank", "Section", "default_env_file", "load_section", "variable_name"]

S = TypeVar("S", bound="Section")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


# A name that must say something (a group id, a topic, a bootstrap list): trimmed, never blank.
NonBlank = Annotated[str, AfterValidator(_not_blank)]


def default_env_file() -> Path:
    """Where ``streamer dev up`` writes its connection settings."""
    return Path(os.environ.get("STREAMER_HOME", ".streamer")) / "dev.env"


class Section(BaseSettings):
    """A group of settings of one concern; field names are the variable names without prefix."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )


def variable_name(loc: tuple[int | str, ...]) -> str:
    return "STREAMER_" + "_".join(str(p) for p in loc).upper()


def load_section(cls: type[S], env_file: Path | None, values: dict[str, Any]) -> S:
    """One section from flags (``values``), the environment and ``env_file``; errors name variables."""
    try:
        return cls(_env_file=env_file if env_file and env_file.exists() else None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = [
            f"{variable_name(err['loc'])}: {err['msg']} (got {_shown(err)})" for err in exc.errors()
        ]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
    except SettingsError as exc:
        # A value that is not the JSON a dict setting needs; the message names the field, never
        # the value.
        raise ConfigError(f"invalid configuration: {exc} (not valid JSON)") from exc


def _shown(err: Any) -> str:
    """The bad value as given, unless it belongs to a secret."""
    if not err["loc"]:
        return "values that are not shown"  # the whole section, secrets included
    name = "_".join(str(p) for p in err["loc"]).lower()
    passthrough = err["loc"][0] in ("kafka", "webhook_headers")  # dicts of secrets
    if passthrough or any(w in name for w in ("password", "secret", "token", "url", "key")):
        return "a value that is not shown"
    return repr(err.get("input"))
