"""Every section of settings together, each loaded (and validated) when a command reads it.

Settings are split by concern: the runtime's (Kafka, PostgreSQL, how a worker batches and
stops), what jobs share (topics, S3, tracking, retention), and each job's own section
(listed by its descriptor, ``streamer.jobs``). A command reads only the sections it uses,
so a bad value in another job's section does not stop it; the CLI validates a command's
sections at start (``require``), naming the bad variable. Flat names
(``media_topic=...``) are routed to the section that owns them, so a flag, a test or the
demo can override any setting without knowing its section. A ``STREAMER_*`` variable that
is no setting at all (a typo) is reported whichever sections a command reads.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from dotenv import dotenv_values
from pydantic.fields import FieldInfo

from streamer.api.settings import ApiSettings
from streamer.config import Section, default_env_file, load_section
from streamer.contract.topics import TopicSettings
from streamer.forward.settings import ForwardSettings
from streamer.gallery.settings import GallerySettings
from streamer.jobs import JOBS
from streamer.objects.settings import ObjectsSettings
from streamer.ops.retention import RetentionSettings
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from streamer.storage.settings import S3Settings
from streamer.tracking.settings import TrackingSettings

__all__ = ["Settings", "load_settings", "unknown_variables"]

S = TypeVar("S", bound=Section)

# Variables that are not settings but are read elsewhere (the dev stack's home, the tests).
_NOT_SETTINGS = ("STREAMER_HOME", "STREAMER_TEST_")


class _Section(Generic[S]):
    """``settings.kafka`` and friends: the section, loaded the first time it is read."""

    def __init__(self, kind: type[S]) -> None:
        self.kind = kind

    @overload
    def __get__(self, obj: None, owner: type[Settings]) -> _Section[S]: ...

    @overload
    def __get__(self, obj: Settings, owner: type[Settings]) -> S: ...

    def __get__(self, obj: Settings | None, owner: type[Settings]) -> S | _Section[S]:
        return self if obj is None else obj.section(self.kind)


class Settings:
    """Every section; ``section(kind)`` (or the attribute) loads one the first time."""

    kafka = _Section(KafkaSettings)
    database = _Section(DatabaseSettings)
    runtime = _Section(RuntimeSettings)
    topics = _Section(TopicSettings)
    s3 = _Section(S3Settings)
    tracking = _Section(TrackingSettings)
    retention = _Section(RetentionSettings)
    gallery = _Section(GallerySettings)
    forward = _Section(ForwardSettings)
    api = _Section(ApiSettings)
    replica = _Section(ReplicaSettings)
    objects = _Section(ObjectsSettings)

    def __init__(self, env_file: Path | None, values: dict[str, Any]) -> None:
        self._env_file = env_file
        self._values = values  # flat overrides, routed when a section loads
        self._loaded: dict[type[Section], Section] = {}

    @classmethod
    def kinds(cls) -> tuple[type[Section], ...]:
        """Every section class: the runtime's and the shared ones, then each job's."""
        named = [v.kind for v in vars(cls).values() if isinstance(v, _Section)]
        return tuple(dict.fromkeys([*named, *(k for j in JOBS for k in j.sections)]))

    @classmethod
    def fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its flat name (the variable name without ``STREAMER_``)."""
        return {name: info for kind in cls.kinds() for name, info in kind.model_fields.items()}

    @classmethod
    def _owner(cls, name: str) -> type[Section]:
        for kind in cls.kinds():
            if name in kind.model_fields:
                return kind
        raise TypeError(f"no setting named {name!r}")

    @classmethod
    def load(cls, env_file: Path | None = None, **values: Any) -> Settings:
        """Settings from flat values (None means "not given"), the environment and ``env_file``;
        a section is validated when it is first read (``require`` validates some now)."""
        given = {k: v for k, v in values.items() if v is not None}
        for name in given:
            cls._owner(name)
        return cls(env_file, given)

    def section(self, kind: type[S]) -> S:
        loaded = self._loaded.get(kind)
        if loaded is None:
            mine = {k: v for k, v in self._values.items() if k in kind.model_fields}
            loaded = self._loaded[kind] = load_section(kind, self._env_file, mine)
        return loaded  # type: ignore[return-value]

    def require(self, *kinds: type[Section]) -> Settings:
        """Load and validate these sections now (a ``ConfigError`` names the bad variable)."""
        for kind in kinds:
            self.section(kind)
        return self

    def replace(self, **values: Any) -> Settings:
        """A copy with some flat settings changed (sections already loaded are copied with
        the change, not validated again: for code, not for input)."""
        for name in values:
            self._owner(name)
        copy = Settings(self._env_file, {**self._values, **values})
        for kind, section in self._loaded.items():
            update = {k: v for k, v in values.items() if k in kind.model_fields}
            copy._loaded[kind] = section.model_copy(update=update) if update else section
        return copy


def unknown_variables(env_file: Path | None = None) -> list[str]:
    """``STREAMER_*`` names in the environment or ``env_file`` that are no setting, each with
    the setting it was probably meant to be."""
    known = {f"STREAMER_{name.upper()}" for name in Settings.fields()}
    nested = tuple(
        f"STREAMER_{name.upper()}__"
        for name, info in Settings.fields().items()
        if info.annotation is not None and "dict" in str(info.annotation)
    )
    names = set(os.environ)
    if env_file is not None and env_file.exists():
        names |= set(dotenv_values(env_file))
    out = []
    for name in sorted(n for n in names if n.startswith("STREAMER_")):
        if name in known or name.startswith(nested) or name.startswith(_NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """What the CLI calls: flags as overrides, then the environment, then dev.env."""
    return Settings.load(env_file if env_file is not None else default_env_file(), **overrides)
