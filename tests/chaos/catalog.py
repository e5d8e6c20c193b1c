"""A seeded catalog with the conflicts real sources produce, for one chaos run.

Wave 1 is published against the first version of the objects, some of which are
still missing ("late": uploaded after wave 1, their events dead-lettered and then
replayed). Some objects are overwritten with new bytes (half between the waves, half
while wave 2 is applied: ``during``), so wave 2 changes content, and the object indexer's
re-checks carry the new bytes to galleries wave 2 does not touch.
Each SKU's versions grow at the source, but events are published out of order
(stale ones), re-sent (duplicates with the same id), re-synced unchanged with a
newer version (no-ops), deleted at the end of a wave and resurrected in the next; a
few carry bad paths or are not Avro at all. Names and enabled flags vary.

Version ties and reused event ids follow the rules of the README ("Versions and event
ids"): a tie is a new event with a version this SKU already sent (stale unless it is
the first to reach it); a reused id is a new content under the id of an event this SKU
sent, dead-lettered when that event owns the id. Both are generated only where their
outcome does not depend on what the contract leaves to arrival or timing:

- a reuse keeps the type of the event whose id it takes, so both travel on one topic in
  one order (product and media topics are consumed independently);
- only on SKUs never deleted: a delete at the end of a wave makes the SKU's earlier media
  events of that wave applied or stale by arrival, and a product upsert after a delete a
  change or a no-op by whether a media event came first, and so whether they own their id;
- never with or under the id of a media event that lists an object overwritten ``during``
  wave 2: whether such an event (or a copy of it sent in wave 2) changes the gallery
  depends on whether it read the old or the new ETag, and so whether it owns its id;
- never under the id of a product upsert with the default name and flag (none, enabled):
  it changes something only when it is the first event of its SKU to arrive, which a
  media event may be (found by seed 8: the oracle, in publish order, had it a no-op).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ROLES = ["base", "small_image", "thumbnail", "swatch_image", "image", "gallery_only"]


@dataclass
class Catalog:
    seed: int
    skus: list[str]
    objects: dict[str, bytes]  # uploaded before wave 1
    late: dict[str, bytes]  # missing during wave 1, uploaded after it
    overwritten: dict[str, bytes]  # new bytes for some objects, after wave 1 or during wave 2
    during: frozenset[str] = frozenset()  # the overwritten paths uploaded while wave 2 is applied
    wave1: list[dict[str, Any]] = field(default_factory=list)
    wave2: list[dict[str, Any]] = field(default_factory=list)
    garbage: list[tuple[str, bytes]] = field(
        default_factory=list
    )  # (sku, bytes) on the media topic


def etag(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


class _Source:
    """One SKU's upstream: versions grow, and it remembers what it sent."""

    def __init__(
        self,
        sku: str,
        rng: random.Random,
        paths: list[str],
        late: list[str],
        *,
        reuse_ids: bool,
        during: frozenset[str],
    ) -> None:
        self.sku = sku
        self.rng = rng
        self.paths = paths
        self.late = late
        self.reuse_ids = reuse_ids
        self.during = during
        self.version = rng.randint(1, 1000) * 1000
        self.used = {self.version}
        self.sent: list[dict[str, Any]] = []
        self.clock = datetime(2026, 11, 1, tzinfo=UTC)

    def _base(self, kind: str, version: int) -> dict[str, Any]:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 5000))
        return {
            "type": kind,
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "sku": self.sku,
            "version": version,
            "occurred_at": self.clock,
            "source": self.rng.choice(["pim", "shop", "import"]),
            "request_id": None,
        }

    def _images(self, with_late: bool, bad: bool) -> list[dict[str, Any]]:
        chosen = self.rng.sample(self.paths, k=self.rng.randint(1, 4))
        if with_late:
            chosen[-1] = self.rng.choice(self.late)
        images = [
            {
                "file_path": path,
                "label": self.rng.choice([None, f"{self.sku} view {i}", "front", "back"]),
                "position": self.rng.choice([None, i, i + 1, 7]),
                "disabled": self.rng.random() < 0.1,
                "roles": self.rng.sample(ROLES, k=self.rng.randint(0, 2)),
                "etag": None,
            }
            for i, path in enumerate(dict.fromkeys(chosen))
        ]
        if bad:
            images.insert(
                self.rng.randint(0, len(images)), {"file_path": "../etc/passwd", "roles": []}
            )
        return images

    def _next_version(self, below: int | None = None) -> int:
        """A version this SKU never used: above all so far, or just below ``below``."""
        while True:
            if below is None:
                candidate = self.version + self.rng.randint(1, 1000)
            else:
                candidate = below - self.rng.randint(1, 500)
            if candidate not in self.used:
                self.used.add(candidate)
                if below is None:
                    self.version = candidate
                return candidate

    def event(self, *, late_rate: float) -> dict[str, Any]:
        rng = self.rng
        roll = rng.random()
        repeatable = [e for e in self.sent if e.get("op") != "DELETE"]
        if repeatable and roll < 0.07:
            return dict(rng.choice(repeatable))  # a duplicate: same id, same content
        if repeatable and roll < 0.13:
            # Sent a while ago, arriving now: an older event's content, a version just
            # below the newest this SKU sent.
            late = dict(rng.choice(repeatable))
            late.update(self._base(late["type"], self._next_version(below=self.version)))
            return late
        if repeatable and roll < 0.19:
            # A re-sync: the latest content again, with a newer version (a no-op).
            latest = max(repeatable, key=lambda e: e["version"])
            again = {**latest, **self._base(latest["type"], self._next_version())}
            self.sent.append(again)
            return again
        if self.sent and roll < 0.25:
            # A tie: other content with a version this SKU already sent (mostly its newest).
            version = self.version if rng.random() < 0.6 else rng.choice(sorted(self.used))
            return self._new(version, late_rate)
        owners = [e for e in repeatable if not self._unsettled(e)]
        if self.reuse_ids and owners and roll < 0.31:
            # An id reused for other content of the same kind, at its version or a newer one.
            first = rng.choice(owners)
            version = first["version"] if rng.random() < 0.5 else self._next_version()
            while True:
                reused = self._new(version, late_rate, kind=first["type"], remember=False)
                reused["event_id"] = first["event_id"]
                if reused != first and not self._unsettled(reused):
                    break
            self.sent.append(reused)
            return reused
        return self._new(self._next_version(), late_rate, product=roll < 0.40)

    def _new(
        self,
        version: int,
        late_rate: float,
        *,
        product: bool | None = None,
        kind: str | None = None,
        remember: bool = True,
    ) -> dict[str, Any]:
        """A new event (a fresh id, new content) at ``version``, remembered as sent."""
        rng = self.rng
        if kind is None:
            kind = "ProductChanged" if (product or rng.random() < 0.33) else "MediaGalleryChanged"
        if kind == "ProductChanged":
            event = self._base("ProductChanged", version)
            event["op"] = "UPSERT"
            event["name"] = rng.choice(
                [None, f"{self.sku} rev {version}", f"{self.sku} classic", "Linen shirt"]
            )
            event["enabled"] = rng.random() < 0.7
        else:
            event = self._base("MediaGalleryChanged", version)
            event["mode"] = rng.choice(["UPSERT", "REPLACE"])
            event["images"] = self._images(rng.random() < late_rate, rng.random() < 0.03)
        if remember:
            self.sent.append(event)
        return event

    def _unsettled(self, event: dict[str, Any]) -> bool:
        """Whether its outcome, and so its ownership of its id, may depend on timing or on
        the arrival of the other topic's events (module doc)."""
        if event["type"] == "ProductChanged":
            return event.get("name") is None and event.get("enabled", True)
        return any(i["file_path"] in self.during for i in event["images"])

    def delete(self) -> dict[str, Any]:
        """The SKU deleted as its last event of a wave: newer than all it sent before.

        A SKU's product and media events travel on two topics, ordered only by their
        versions; a delete newer than every media event removes the gallery whichever
        arrives first, so the final state does not depend on the interleaving.
        """
        event = self._base("ProductChanged", self._next_version())
        event.update(op="DELETE", name=None, enabled=True)
        self.sent.append(event)
        return event


def generate(seed: int, *, n_skus: int = 40, events_per_wave: int = 600) -> Catalog:
    rng = random.Random(seed)
    folders = [f"/chaos/{f:02d}" for f in range(6)]
    paths = [f"{rng.choice(folders)}/img-{i:03d}.jpg" for i in range(60)]
    paths = list(dict.fromkeys(paths))
    late = [f"/chaos/late/img-{i:03d}.jpg" for i in range(8)]
    body = {p: f"{seed}:{p}:v1".encode() * rng.randint(2, 20) for p in paths + late}
    overwritten = sorted(rng.sample(paths, k=12))
    catalog = Catalog(
        seed=seed,
        skus=[f"CH{seed}-{i:03d}" for i in range(n_skus)],
        objects={p: body[p] for p in paths},
        late={p: body[p] for p in late},
        overwritten={p: f"{seed}:{p}:v2".encode() * 3 for p in overwritten},
        during=frozenset(overwritten[1::2]),
    )
    deleted = [sorted(rng.sample(catalog.skus, k=max(1, n_skus // 10))) for _ in range(2)]
    sources = {
        sku: _Source(
            sku,
            rng,
            paths,
            late,
            reuse_ids=not any(sku in d for d in deleted),
            during=catalog.during,
        )
        for sku in catalog.skus
    }
    for wave, late_rate, wave_deletes in (
        (1, 0.12, deleted[0]),
        (2, 0.0, deleted[1]),
    ):
        events = catalog.wave1 if wave == 1 else catalog.wave2
        for _ in range(events_per_wave):
            events.append(sources[rng.choice(catalog.skus)].event(late_rate=late_rate))
        for sku in wave_deletes:
            events.append(sources[sku].delete())
    for _ in range(3):
        catalog.garbage.append((rng.choice(catalog.skus), b"\x07" + rng.randbytes(20)))
    return catalog
