"""The lean path and the pydantic models agree: same event (and fingerprint), or the same
reason and message, on generated and hand-written records, bad ones included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamer.contract.codec import Codec
from streamer.contract.errors import InvalidEvent
from streamer.contract.events import fingerprint, parse_event
from streamer.contract.lean import lean_event, lean_fingerprint, lean_of
from streamer.errors import StreamerError

pytestmark = pytest.mark.unit

MEDIA, PRODUCT = "MediaGalleryChanged", "ProductChanged"
NOW = datetime(2026, 11, 23, 12, 30, 15, 123000, tzinfo=UTC)


def through_models(type_name: str, record: dict[str, Any]) -> tuple[Any, ...]:
    try:
        model = parse_event(type_name, dict(record))
    except InvalidEvent as exc:
        return ("invalid", exc.reason, exc.message)
    return ("event", lean_of(model), fingerprint(model))


def through_lean(type_name: str, record: dict[str, Any]) -> tuple[Any, ...]:
    try:
        event = lean_event(type_name, dict(record))
    except InvalidEvent as exc:
        return ("invalid", exc.reason, exc.message)
    return ("event", event, lean_fingerprint(event))


def assert_same(type_name: str, record: dict[str, Any]) -> tuple[Any, ...]:
    expected = through_models(type_name, record)
    assert through_lean(type_name, record) == expected
    return expected


# -- generated records, shaped as fastavro returns them ------------------------------------

segment = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=0, max_size=12)
file_paths = st.one_of(
    st.lists(segment, min_size=1, max_size=4).map("/".join),
    st.lists(segment, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    st.sampled_from(["/a/../b.jpg", "a\\b.jpg", "/a//b.jpg", "", "  ", "/ok/./x.jpg", "/é/ü.jpg"]),
    st.integers(200, 300).map(lambda n: "/" + "x" * n),
)
roles = st.lists(
    st.sampled_from(
        [
            "base",
            "image",
            "small_image",
            "thumbnail",
            "swatch_image",
            " Base ",
            "THUMBNAIL",
            "custom",
            "",
            "image",
        ]
    ),
    max_size=5,
)
texts = st.text(max_size=20)
images = st.fixed_dictionaries(
    {
        "file_path": file_paths,
        "label": st.one_of(st.none(), texts, st.integers(250, 260).map(lambda n: "l" * n)),
        "position": st.one_of(st.none(), st.integers(-5, 2**31 - 1)),
        "disabled": st.booleans(),
        "roles": roles,
        "etag": st.one_of(st.none(), st.sampled_from(['"abc"', "abc", '""', '"', "x y"])),
    }
)
event_ids = st.one_of(
    st.uuids(),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.sampled_from(["", "not-a-uuid", "1234"]),
)
skus = st.one_of(
    st.text(min_size=1, max_size=10).map(str.strip).filter(bool),
    st.text(max_size=70),
    st.sampled_from(["  ", "a\x00b", " padded ", "x" * 64, "x" * 65, "tab\tsku"]),
)
common = {
    "event_id": event_ids,
    "sku": skus,
    "version": st.one_of(st.integers(0, 2**62), st.integers(-(2**62), -1)),
    "occurred_at": st.datetimes(
        # hypothesis wants naive bounds; the values it draws carry UTC
        min_value=datetime(1990, 1, 1),  # noqa: DTZ001
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    "source": st.one_of(texts, st.integers(250, 260).map(lambda n: "s" * n)),
    "request_id": st.one_of(st.none(), texts, st.integers(250, 260).map(lambda n: "r" * n)),
}
media_records = st.fixed_dictionaries(
    {
        **common,
        "mode": st.sampled_from(["UPSERT", "REPLACE"]),
        "images": st.lists(images, max_size=6),
    }
)
product_records = st.fixed_dictionaries(
    {
        **common,
        "op": st.sampled_from(["UPSERT", "DELETE"]),
        "name": st.one_of(st.none(), texts),
        "enabled": st.booleans(),
    }
)


# Event-level fields that are valid, so what the images hold decides the outcome.
valid_media_records = st.fixed_dictionaries(
    {
        "event_id": st.uuids(),
        "sku": st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64),
        "version": st.integers(0, 2**62),
        "occurred_at": common["occurred_at"],
        "source": st.text(min_size=1, max_size=20),
        "request_id": st.one_of(st.none(), texts),
        "mode": st.sampled_from(["UPSERT", "REPLACE"]),
        "images": st.lists(images, max_size=6),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(media_records)
def test_media_records_give_the_same_event_or_error(record: dict[str, Any]) -> None:
    assert_same(MEDIA, record)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_media_records)
def test_images_are_normalised_and_marked_alike(record: dict[str, Any]) -> None:
    assert assert_same(MEDIA, record)[0] == "event"


@settings(max_examples=200, deadline=None)
@given(product_records)
def test_product_records_give_the_same_event_or_error(record: dict[str, Any]) -> None:
    assert_same(PRODUCT, record)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(media_records)
def test_through_the_codec_both_decoders_agree(record: dict[str, Any]) -> None:
    codec = Codec()
    try:
        value = codec.encode_record(dict(record), type_name=MEDIA, topic="t")
    except (ValueError, TypeError, OverflowError):
        assume(False)  # not representable in Avro (e.g. a malformed uuid string)
    try:
        expected: tuple[Any, ...] = ("event", lean_of(codec.decode_event(value)))
    except StreamerError as exc:
        expected = ("refused", exc.reason, exc.message)
    try:
        got: tuple[Any, ...] = ("event", codec.decode_lean(value))
    except StreamerError as exc:
        got = ("refused", exc.reason, exc.message)
    assert got == expected


# -- hand-written records ------------------------------------------------------------------


def media(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": uuid.UUID("6f1c2b9e-3a4d-4c8e-9f00-1234567890ab"),
        "sku": "SKU-1",
        "version": 7,
        "occurred_at": NOW,
        "source": "pim",
        "request_id": None,
        "mode": "REPLACE",
        "images": [
            {
                "file_path": "a/b.jpg",
                "label": "front",
                "position": 0,
                "disabled": False,
                "roles": ["base", "Thumbnail", "custom"],
                "etag": '"abc"',
            }
        ],
    }
    record.update(overrides)
    return record


def image(**overrides: Any) -> dict[str, Any]:
    base = media()["images"][0]
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (media(event_id="nope"), "invalid_event_id"),
        (media(sku=""), "invalid_sku"),
        (media(sku="   "), "invalid_sku"),
        (media(sku="x" * 65), "invalid_sku"),
        (media(sku="a\x07b"), "invalid_sku"),
        (media(version=-1), "invalid_event"),
        (media(source=""), "invalid_event"),
        (media(source="s" * 256), "invalid_event"),
        (media(request_id="r" * 256), "invalid_event"),
        (media(images=[image()] * 1001), "too_many_images"),
        (media(sku="", version=-3, source=""), "invalid_sku"),  # several errors: the first names it
        (media(mode="SOMETIMES"), "invalid_event"),
        (media(images="not a list"), "invalid_event"),
        (media(unexpected=1), "unknown_field"),
        ({k: v for k, v in media().items() if k != "sku"}, "missing_field"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_records_fail_with_the_models_reason_and_message(
    record: dict[str, Any], reason: str
) -> None:
    result = assert_same(MEDIA, record)
    assert result[:2] == ("invalid", reason)


@pytest.mark.parametrize(
    "record",
    [
        media(),
        media(event_id=str(uuid.uuid4()).upper(), sku="  padded  "),
        media(
            occurred_at=datetime(2026, 1, 1, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=2)))
        ),
        media(images=[]),
        media(images=[image(file_path="/a/../b.jpg"), image(file_path="ok.jpg", roles=["base"])]),
        media(images=[image(label="l" * 300), image(file_path="a\\b.jpg", label="l" * 300)]),
        media(images=[image(etag='""'), image(etag=None, roles=[])]),
        media(images=[image(file_path="x" * 300)]),
        media(images=[image(file_path="/a/\x01.jpg")]),
        media(version=True),  # the model takes a bool as an int: the fast path leaves it to it
        media(images=[{"file_path": "/only/a/path.jpg"}]),
    ],
)
def test_hand_written_records_give_the_same_event(record: dict[str, Any]) -> None:
    assert assert_same(MEDIA, record)[0] == "event"


def test_products_too() -> None:
    base = {k: v for k, v in media().items() if k not in ("mode", "images")}
    for record in (
        {**base, "op": "DELETE", "name": None, "enabled": True},
        {**base, "op": "UPSERT", "name": "Shoe", "enabled": False},
        {**base, "op": "UPSERT", "name": "Shoe", "enabled": False, "sku": ""},
        {**base, "op": "UPSERT", "name": 5, "enabled": False},
    ):
        assert_same(PRODUCT, record)


def test_an_unknown_event_type_is_refused_alike() -> None:
    assert assert_same("Nothing", media()) == (
        "invalid",
        "unknown_event_type",
        "unknown event type 'Nothing'",
    )
