"""An independent model of the gallery rules, to hold the real system's final state against.

Written from DESIGN.md's "Gallery rules" and the README's event contract, not from
``streamer.gallery``: it shares no code with the consumer, so a bug in the fold or
diff shows up as a difference. It works on plain dictionaries, one event at a time, in
the order the events were consumed (each SKU's in partition order), with the objects as
they were in S3 when the events were processed. The two rules that make the result
independent of batches and redeliveries:

- the first event to reach a version keeps it: an event with an older version than the
  SKU's (products and galleries apart; a DELETE must be as new as both), or the same
  version taken by another event, is stale; the same event again is applied again;
- an event id belongs to the first event under it that changed state or was partial;
  the same content again is a duplicate (applied again after partial), other content is
  dead-lettered ``duplicate_event_id``; an event that changed nothing owns no id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MANAGED = ("image", "small_image", "thumbnail", "swatch_image")
ALIASES = {"base": "image"}


@dataclass
class Obj:
    etag: str
    size: int


@dataclass
class Img:
    etag: str
    label: str | None
    position: int | None
    disabled: bool
    roles: tuple[str, ...]
    content_version: int


Position = tuple[int, str]  # (version, id of the event that took it)


@dataclass
class Sku:
    product: Position = (-1, "")
    gallery: Position = (-1, "")
    deleted: bool = False
    name: str | None = None
    enabled: bool = True
    images: dict[str, Img] = field(default_factory=dict)
    exists: bool = False


@dataclass(frozen=True)
class Letter:
    """A dead letter the oracle expects: which event, and why."""

    event_id: str
    reason: str


def normalized_path(raw: str) -> str | None:
    """The path with one leading slash, or None when the contract calls it invalid."""
    if not raw.strip() or "\\" in raw or any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in raw):
        return None
    path = "/" + raw.lstrip("/")
    segments = path[1:].split("/")
    if ".." in segments or "." in segments or "" in segments:
        return None
    return path if len(path.encode()) <= 255 else None


def managed_roles(roles: Iterable[str]) -> list[str]:
    out: list[str] = []
    for role in roles:
        name = ALIASES.get(role.strip().lower(), role.strip().lower())
        if name in MANAGED and name not in out:
            out.append(name)
    return out


def content_key(event: Mapping[str, Any]) -> str:
    """What makes two events with the same id "the same event"."""
    return json.dumps(event, sort_keys=True, default=str)


class Oracle:
    """Applies events as the contract says; ``states`` and ``letters`` are the expectation."""

    def __init__(self, *, max_image_bytes: int = 10 * 1024 * 1024) -> None:
        self.max_image_bytes = max_image_bytes
        self.states: dict[str, Sku] = {}
        self.letters: list[Letter] = []
        self.recorded: dict[str, tuple[str, str]] = {}  # event_id -> (outcome, content key)
        self.applied: dict[str, int] = {}  # event_id -> times it changed or re-applied state
        self.outcomes: dict[str, list[str]] = {}  # event_id -> outcome of each delivery
        self.reasons: dict[str, str] = {}  # event_id -> why it was first partial

    def apply(self, event: Mapping[str, Any], objects: Mapping[str, Obj]) -> str:
        """One event of its SKU, in partition order; returns its outcome."""
        outcome = self._apply(event, objects)
        self.outcomes.setdefault(event["event_id"], []).append(outcome)
        return outcome

    def _apply(self, event: Mapping[str, Any], objects: Mapping[str, Obj]) -> str:
        sku = self.states.setdefault(event["sku"], Sku())
        key = content_key(event)
        prior = self.recorded.get(event["event_id"])
        if prior is not None and prior[1] != key:
            # The idempotency key reused for other content: the first owner keeps it.
            self.letters.append(Letter(event["event_id"], "duplicate_event_id"))
            return "dead_lettered"
        if prior is not None and prior[0] != "partial":
            return "duplicate"  # a re-delivery with the same content changes nothing
        if event["type"] == "ProductChanged":
            outcome = self._product(sku, event)
        else:
            outcome = self._media(sku, event, objects)
        if outcome in ("written", "partial"):
            # Ids are remembered when their event changed state or was dead-lettered;
            # a no-op or stale event leaves no trace (and its re-delivery changes nothing).
            self.recorded[event["event_id"]] = (outcome, key)
            self.applied[event["event_id"]] = self.applied.get(event["event_id"], 0) + 1
        return outcome

    def _product(self, sku: Sku, event: Mapping[str, Any]) -> str:
        deleting = event.get("op", "UPSERT") == "DELETE"
        if stale(event, sku.product) or (deleting and stale(event, sku.gallery)):
            return "stale"  # a DELETE removes the gallery: it must be as new as the gallery
        at = position(event)
        before = _content(sku)
        sku.product = at
        sku.exists = True
        if event.get("op", "UPSERT") == "DELETE":
            sku.deleted = True
            sku.images = {}
            sku.gallery = at
        else:
            sku.deleted = False
            sku.name = event.get("name")
            sku.enabled = event.get("enabled", True)
        return "written" if _content(sku) != before else "noop"

    def _media(self, sku: Sku, event: Mapping[str, Any], objects: Mapping[str, Obj]) -> str:
        if stale(event, sku.gallery):
            return "stale"
        before = _content(sku)
        invalid: list[str] = []
        resolved: list[tuple[str, Mapping[str, Any], Obj]] = []
        for image in event["images"]:
            path = normalized_path(image["file_path"])
            label = image.get("label")
            if path is None:
                invalid.append("invalid_file_path")
                continue
            if label is not None and len(label) > 255:
                invalid.append("invalid_label")
                continue
            obj = objects.get(path)
            if obj is None:
                invalid.append("object_missing")
            elif obj.size > self.max_image_bytes:
                invalid.append("object_too_large")
            else:
                resolved.append((path, image, obj))
        images = dict(sku.images)
        if event.get("mode", "UPSERT") == "REPLACE":
            listed = {normalized_path(i["file_path"]) or i["file_path"] for i in event["images"]}
            images = {p: i for p, i in images.items() if p in listed}
        owns_roles = not invalid
        owner: dict[str, str] = {}
        if owns_roles:
            for path, image, _ in resolved:
                for role in managed_roles(image.get("roles") or []):
                    owner[role] = path
            now = {path for path, _, _ in resolved}
            for path, img in images.items():
                if img.roles and path not in now:
                    images[path] = Img(
                        img.etag, img.label, img.position, img.disabled, (), img.content_version
                    )
        for path, image, obj in resolved:
            old = sku.images.get(path)
            if owns_roles:
                # A path listed twice owns what either listing claimed last.
                roles = tuple(sorted(r for r, claimant in owner.items() if claimant == path))
            else:
                roles = old.roles if old is not None else ()
            version = 1 if old is None else old.content_version + (old.etag != obj.etag)
            images[path] = Img(
                obj.etag, image.get("label"), image.get("position"),
                bool(image.get("disabled", False)), roles, version,
            )  # fmt: skip
        sku.images = images
        sku.gallery = position(event)
        sku.deleted = False
        sku.exists = True
        if invalid:
            self.letters.append(Letter(event["event_id"], invalid[0]))
            self.reasons.setdefault(event["event_id"], invalid[0])
            return "partial"
        return "written" if _content(sku) != before else "noop"

    def recheck(self, objects: Mapping[str, Obj], paths: Iterable[str]) -> list[tuple[str, str]]:
        """What the object index's re-checks do once ``paths`` were overwritten in S3: every
        stored image of those paths takes the object's ETag now, ``content_version`` + 1
        where the bytes changed; versions, metadata and roles stay. Returns the (SKU, path)
        pairs it changed.

        Where a re-check lands among a SKU's later events does not change the final state,
        as long as every event after the overwrite sees the new objects: an image still
        carrying the old ETag is either re-checked first (+1, and the event that touches it
        later sees the same ETag: +0) or touched first by an event (+1, and the re-check
        then finds nothing to change); an image a REPLACE or a delete removes is gone either
        way. So the oracle applies them at one point, after the overwrite (the run's
        ``compare`` bounds what an overwrite made during wave 2 adds to this).
        """
        changed: list[tuple[str, str]] = []
        wanted = set(paths)
        for name, state in self.states.items():
            for path, img in list(state.images.items()):
                obj = objects.get(path)
                if path not in wanted or obj is None or obj.etag == img.etag:
                    continue
                state.images[path] = Img(
                    obj.etag, img.label, img.position, img.disabled, img.roles,
                    img.content_version + 1,
                )  # fmt: skip
                changed.append((name, path))
        return changed

    def export(self) -> list[dict[str, Any]]:
        """What ``streamer gallery export`` prints for the same state."""
        out = []
        for name in sorted(s for s, state in self.states.items() if state.exists):
            state = self.states[name]
            ordered = sorted(
                state.images.items(),
                key=lambda kv: (kv[1].position is None, kv[1].position or 0, kv[0]),
            )
            out.append(
                {
                    "sku": name,
                    "version": max(state.product[0], state.gallery[0]),
                    "deleted": state.deleted,
                    "name": state.name,
                    "enabled": state.enabled,
                    "images": [
                        {
                            "file_path": path,
                            "etag": img.etag,
                            "label": img.label,
                            "position": img.position,
                            "disabled": img.disabled,
                            "roles": sorted(img.roles),
                        }
                        for path, img in ordered
                    ],
                }
            )
        return out

    def content_versions(self) -> dict[tuple[str, str], int]:
        return {
            (name, path): img.content_version
            for name, state in self.states.items()
            for path, img in state.images.items()
        }


def position(event: Mapping[str, Any]) -> Position:
    return (event["version"], str(event["event_id"]))


def stale(event: Mapping[str, Any], held: Position) -> bool:
    """Older than what the SKU holds, or the same version taken by another event."""
    version, event_id = position(event)
    return version < held[0] or (version == held[0] and event_id != held[1])


def _content(sku: Sku) -> tuple[Any, ...]:
    return (
        sku.exists,
        sku.deleted,
        sku.name,
        sku.enabled,
        tuple(
            sorted(
                (p, i.etag, i.label, i.position, i.disabled, tuple(sorted(i.roles)))
                for p, i in sku.images.items()
            )
        ),
    )
