"""Which S3 request finds a batch's ETags most cheaply: a HEAD per key, or a LIST of the
folder. Pure: no I/O.

Costs are counted in HEAD requests. Listing a folder of ``n`` keys costs one request per
page of 1,000 keys plus ``KEY_COST`` per key listed: on the S3 servers measured here
(moto), a listed key costs about a sixteenth of a HEAD, server and client together.
A folder is listed when that is cheaper than HEADs of the keys the batch wants from
it; its size is learned from earlier listings, so a folder of 100,000 keys is never
listed for three of them. A folder never listed before is probed with a budgeted
listing when enough keys are wanted from it to make that worth the risk.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = [
    "KEY_COST",
    "PAGE_KEYS",
    "PROBE_MIN_KEYS",
    "FolderSizes",
    "LookupPlan",
    "folder_of",
    "list_cost",
    "plan_lookups",
]

PAGE_KEYS = 1000  # keys per ListObjectsV2 page
KEY_COST = 1 / 16  # a listed key, in HEADs
PROBE_MIN_KEYS = 16  # wanted keys that justify listing a folder of unknown size


def folder_of(key: str) -> str:
    """The folder a key is listed in (its prefix up to the last slash, slash included)."""
    cut = key.rfind("/")
    return key[: cut + 1] if cut >= 0 else ""


def list_cost(keys: int) -> float:
    """What listing ``keys`` keys costs, in HEADs."""
    return max(1, math.ceil(keys / PAGE_KEYS)) + keys * KEY_COST


@dataclass
class FolderSizes:
    """Folder sizes learned from listings: exact when a listing ran to its end, a lower
    bound when it stopped early. Bounded: the oldest entries go first."""

    capacity: int = 100_000
    _sizes: dict[str, tuple[int, bool]] = field(default_factory=dict)  # folder -> (keys, exact)

    def learn(self, folder: str, keys: int, *, complete: bool) -> None:
        self._sizes.pop(folder, None)
        self._sizes[folder] = (keys, complete)
        while len(self._sizes) > self.capacity:
            del self._sizes[next(iter(self._sizes))]

    def get(self, folder: str) -> tuple[int, bool] | None:
        return self._sizes.get(folder)

    def __len__(self) -> int:
        return len(self._sizes)


@dataclass(frozen=True)
class LookupPlan:
    """``heads``: keys to HEAD. ``lists``: folder -> (keys wanted, listing budget in HEADs;
    None lists it whole)."""

    heads: list[str] = field(default_factory=list)
    lists: dict[str, tuple[list[str], float | None]] = field(default_factory=dict)


def plan_lookups(keys: Iterable[str], sizes: FolderSizes, mode: str = "auto") -> LookupPlan:
    """Per folder, LIST where the wanted keys make it cheaper than HEADs (``auto``), or the
    forced choice (``head``, ``list``)."""
    by_folder: dict[str, list[str]] = {}
    for key in dict.fromkeys(keys):
        by_folder.setdefault(folder_of(key), []).append(key)
    plan = LookupPlan()
    for folder, wanted in by_folder.items():
        if mode == "head":
            plan.heads.extend(wanted)
        elif mode == "list":
            plan.lists[folder] = (wanted, None)
        else:
            _choose(folder, wanted, sizes.get(folder), plan)
    return plan


def _choose(
    folder: str, wanted: Collection[str], known: tuple[int, bool] | None, plan: LookupPlan
) -> None:
    heads = len(wanted)
    if known is None:
        if heads >= PROBE_MIN_KEYS:
            plan.lists[folder] = (list(wanted), float(heads))  # a probe: stop past the HEADs' cost
        else:
            plan.heads.extend(wanted)
        return
    size, _exact = known
    if list_cost(size) >= heads:
        plan.heads.extend(wanted)
    else:
        # Folders grow, and a lower bound may be far short: never list past the HEADs' cost.
        plan.lists[folder] = (list(wanted), float(heads))
