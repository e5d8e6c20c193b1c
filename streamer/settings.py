"""Every section of settings together: what the CLI reads once at start and hands out by section.

A new job adds its section here, one line; its fields live in its own package.
Flat names (``media_topic=...``) are routed to the section that owns them, so a
flag, a test or the demo can override any setting without knowing its section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from streamer.api.settings import ApiSettings
from streamer.config import Section, default_env_file, load_section
from streamer.contract.topics import TopicSettings
from streamer.forward.settings import ForwardSettings
from streamer.gallery.settings import GallerySettings
from streamer.objects.settings import ObjectsSettings
from streamer.ops.retention import RetentionSettings
from streamer.replicate.settings import ReplicaSettings
from streamer.runtime.settings import DatabaseSettings, KafkaSettings, RuntimeSettings
from streamer.storage.settings import S3Settings
from streamer.tracking.settings import TrackingSettings

__all__ = ["Settings", "load_settings"]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings
    database: DatabaseSettings
    runtime: RuntimeSettings
    topics: TopicSettings
    s3: S3Settings
    gallery: GallerySettings
    forward: ForwardSettings
    tracking: TrackingSettings
    api: ApiSettings
    replica: ReplicaSettings
    objects: ObjectsSettings
    retention: RetentionSettings

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        return {name: field.annotation for name, field in cls.model_fields.items()}  # type: ignore[misc]

    @classmethod
    def fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its flat name (the variable name without ``STREAMER_``)."""
        return {
            name: info
            for section in cls.sections().values()
            for name, info in section.model_fields.items()
        }

    @classmethod
    def _route(cls, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        routed: dict[str, dict[str, Any]] = {name: {} for name in cls.sections()}
        owners = {
            field: section
            for section, kind in cls.sections().items()
            for field in kind.model_fields
        }
        for key, value in values.items():
            if key not in owners:
                raise TypeError(f"no setting named {key!r}")
            routed[owners[key]][key] = value
        return routed

    @classmethod
    def load(cls, env_file: Path | None = None, **values: Any) -> Settings:
        """Settings from flat values (None means "not given"), the environment and ``env_file``."""
        given = {k: v for k, v in values.items() if v is not None}
        routed = cls._route(given)
        return cls.model_validate(
            {
                name: load_section(kind, env_file, routed[name])
                for name, kind in cls.sections().items()
            }
        )

    def replace(self, **values: Any) -> Settings:
        """A copy with some flat settings changed (not re-validated: for code, not for input)."""
        routed = self._route(values)
        return self.model_copy(
            update={
                name: getattr(self, name).model_copy(update=update)
                for name, update in routed.items()
                if update
            }
        )

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name, secrets still wrapped."""
        out: dict[str, Any] = {}
        for name in self.sections():
            out.update(dict(getattr(self, name)))
        return out


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """What the CLI calls: flags as overrides, then the environment, then dev.env."""
    return Settings.load(env_file if env_file is not None else default_env_file(), **overrides)
