"""Choosing between HEADs and LISTs per folder, by expected cost, without servers."""

from __future__ import annotations

import pytest

from streamer.gallery.etag_plan import (
    PROBE_MIN_KEYS,
    FolderSizes,
    folder_of,
    list_cost,
    plan_lookups,
)

pytestmark = pytest.mark.unit


def keys(folder: str, n: int) -> list[str]:
    return [f"{folder}k{i:05d}.jpg" for i in range(n)]


def test_folder_of_keeps_the_trailing_slash() -> None:
    assert folder_of("media/a/b.jpg") == "media/a/"
    assert folder_of("b.jpg") == ""


def test_a_folder_of_100000_keys_is_never_listed_for_three_of_them() -> None:
    sizes = FolderSizes()
    sizes.learn("big/", 100_000, complete=True)
    plan = plan_lookups(keys("big/", 3), sizes)
    assert plan.heads == keys("big/", 3) and not plan.lists
    # ... nor for a thousand: 100 pages + 100,000 listed keys cost more than 1,000 HEADs.
    assert not plan_lookups(keys("big/", 1000), sizes).lists


def test_a_known_folder_is_listed_when_cheaper_than_heads_of_the_wanted_keys() -> None:
    sizes = FolderSizes()
    sizes.learn("f/", 500, complete=True)
    assert list_cost(500) == pytest.approx(1 + 500 / 16)
    wanted = keys("f/", 40)
    plan = plan_lookups(wanted, sizes)
    assert plan.lists == {"f/": (wanted, 40.0)} and not plan.heads
    few = plan_lookups(keys("f/", 20), sizes)
    assert few.heads and not few.lists


def test_an_unknown_folder_is_probed_only_when_enough_keys_are_wanted() -> None:
    sizes = FolderSizes()
    assert plan_lookups(keys("u/", PROBE_MIN_KEYS - 1), sizes).lists == {}
    probe = plan_lookups(keys("u/", PROBE_MIN_KEYS), sizes)
    assert probe.lists["u/"][1] == float(PROBE_MIN_KEYS)  # stops past the HEADs' cost


def test_forced_choices_and_duplicates() -> None:
    wanted = [*keys("a/", 2), *keys("b/", 2), "a/k00000.jpg"]
    heads = plan_lookups(wanted, FolderSizes(), "head")
    assert heads.heads == [*keys("a/", 2), *keys("b/", 2)] and not heads.lists
    lists = plan_lookups(wanted, FolderSizes(), "list")
    assert lists.lists == {"a/": (keys("a/", 2), None), "b/": (keys("b/", 2), None)}


def test_learned_sizes_are_bounded_oldest_first() -> None:
    sizes = FolderSizes(capacity=2)
    sizes.learn("a/", 1, complete=True)
    sizes.learn("b/", 2, complete=True)
    sizes.learn("a/", 3, complete=False)  # learning again makes it the newest
    sizes.learn("c/", 4, complete=True)
    assert len(sizes) == 2
    assert sizes.get("b/") is None
    assert sizes.get("a/") == (3, False) and sizes.get("c/") == (4, True)
