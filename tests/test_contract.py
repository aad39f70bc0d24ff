"""The event contract, as a producer or the worker meets it.

Each kind of bad input is refused with its own reason from ``REASONS``;
valid events and catalog items survive an encode/decode round trip.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from producers.contract import (
    MAX_AHEAD_MS,
    MAX_CONTEXT_KEYS,
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    MAX_TEXT_CHARS,
    MIN_TS_MS,
    REASONS,
    SCHEMA_VERSION,
    CatalogItem,
    CatalogRemoval,
    Event,
    InvalidRecord,
    ItemContent,
    decode_catalog_item,
    decode_catalog_record,
    decode_event,
    encode_catalog_item,
    encode_event,
)

NOW_MS = 1_732_240_000_500  # the reader's clock in every test


def valid_event(**changes: Any) -> dict[str, Any]:
    """A complete valid event as a JSON object, with ``changes`` applied.

    A change to ``None`` removes the field; ``item__price=...`` changes a field of ``item``.
    """
    obj: dict[str, Any] = {
        "event_id": "e-1",
        "ts": 1_732_240_000_123,
        "type": "click",
        "user_id": "u1",
        "item_id": "i9",
        "item": {"category": "electronics.phone", "brand": "acme", "price": 199.0},
        "session_id": "s1",
        "context": {"device": "mobile"},
    }
    for key, value in changes.items():
        target, field = (obj["item"], key.split("__")[1]) if "__" in key else (obj, key)
        if value is None:
            del target[field]
        else:
            target[field] = value
    return obj


def wire(obj: Any) -> bytes:
    """What a producer would put on the topic (NaN and Infinity written as JavaScript does)."""
    return json.dumps(obj).encode()


INVALID_EVENTS = [
    # what the bytes are
    ("not JSON", b'{"event_id": "e-1", "ts": ', "not_json"),
    ("binary garbage", b"\xff\xfe\x00\x81binary\xc3", "not_utf8"),
    ("empty value", b"", "empty"),
    ("no value at all (tombstone)", None, "empty"),
    ("JSON array", b"[1, 2, 3]", "not_object"),
    ("JSON string", b'"click"', "not_object"),
    ("JSON null", b"null", "not_object"),
    # the contract version, checked before any field
    ("a later schema version", wire(valid_event(schema=SCHEMA_VERSION + 1)), "unknown_schema"),
    ("schema 0", wire(valid_event(schema=0)), "unknown_schema"),
    ("schema as a string", wire(valid_event(schema="2")), "unknown_schema"),
    ("schema as a float", wire(valid_event(schema=2.0)), "unknown_schema"),
    ("schema as a bool", wire(valid_event(schema=True)), "unknown_schema"),
    ("unknown schema and no user_id", wire(valid_event(schema=9, user_id=None)), "unknown_schema"),
    ("1 MB value", wire(valid_event(user_id="u" * 1_000_000)), "oversized"),
    ("1 MB string, not bytes", json.dumps(valid_event(item__brand="b" * 1_000_000)), "oversized"),
    # required fields
    ("missing user_id", wire(valid_event(user_id=None)), "missing_field"),
    ("missing item_id", wire(valid_event(item_id=None)), "missing_field"),
    ("missing event_id", wire(valid_event(event_id=None)), "missing_field"),
    ("missing ts", wire(valid_event(ts=None)), "missing_field"),
    ("missing type", wire(valid_event(type=None)), "missing_field"),
    ("empty user_id", wire(valid_event(user_id="")), "missing_field"),
    ("unknown type", wire(valid_event(type="like")), "unknown_type"),
    ("type in capitals", wire(valid_event(type="CLICK")), "unknown_type"),
    # price
    ("NaN price", wire(valid_event(item__price=float("nan"))), "bad_price"),
    ("infinite price", wire(valid_event(item__price=float("inf"))), "bad_price"),
    ("negative price", wire(valid_event(item__price=-0.01)), "bad_price"),
    (
        "price overflowing to infinity",
        wire(valid_event(item__price=7.5)).replace(b"7.5", b"1e999"),
        "bad_price",
    ),
    ("price too large an integer for a float", wire(valid_event(item__price=10**400)), "bad_price"),
    ("quantity 0", wire(valid_event(type="purchase", quantity=0)), "bad_quantity"),
    ("quantity above 10,000", wire(valid_event(type="purchase", quantity=10_001)), "bad_quantity"),
    ("fractional quantity", wire(valid_event(type="purchase", quantity=1.5)), "bad_quantity"),
    ("quantity as a string", wire(valid_event(type="purchase", quantity="2")), "bad_quantity"),
    ("bool as quantity", wire(valid_event(type="purchase", quantity=True)), "bad_quantity"),
    # wrong types
    ("ts as a string", wire(valid_event(ts="1732240000123")), "wrong_type"),
    ("ts as a float", wire(valid_event(ts=1_732_240_000_123.5)), "wrong_type"),
    ("bool as ts", wire(valid_event(ts=True)), "wrong_type"),
    ("user_id as a number", wire(valid_event(user_id=42)), "wrong_type"),
    ("type as a number", wire(valid_event(type=1)), "wrong_type"),
    ("price as a string", wire(valid_event(item__price="199.0")), "wrong_type"),
    ("bool as price", wire(valid_event(item__price=True)), "wrong_type"),
    ("item not an object", wire(valid_event(item=["electronics.phone", 199.0])), "wrong_type"),
    ("item as a string", wire(valid_event(item="i9")), "wrong_type"),
    ("context not an object", wire(valid_event(context="mobile")), "wrong_type"),
    ("context value not a string", wire(valid_event(context={"device": 1})), "wrong_type"),
    ("session_id as a number", wire(valid_event(session_id=7)), "wrong_type"),
    # sizes
    ("over-long event_id", wire(valid_event(event_id="e" * (MAX_ID_CHARS + 1))), "too_long"),
    ("over-long user_id", wire(valid_event(user_id="u" * (MAX_ID_CHARS + 1))), "too_long"),
    ("over-long item_id", wire(valid_event(item_id="i" * (MAX_ID_CHARS + 1))), "too_long"),
    ("over-long brand", wire(valid_event(item__brand="b" * (MAX_TEXT_CHARS + 1))), "too_long"),
    (
        "too many context keys",
        wire(valid_event(context={f"k{i}": "v" for i in range(MAX_CONTEXT_KEYS + 1)})),
        "too_long",
    ),
    # text that no UTF-8 encoder accepts (a JSON escape of half a surrogate pair)
    ("lone surrogate in user_id", wire(valid_event(user_id="\ud800")), "not_utf8"),
    ("lone surrogate in brand", wire(valid_event(item__brand="\ud83d")), "not_utf8"),
    # time
    ("timestamp before 2000-01-01", wire(valid_event(ts=MIN_TS_MS - 1)), "bad_timestamp"),
    ("timestamp in seconds, not ms", wire(valid_event(ts=1_732_240_000)), "bad_timestamp"),
    ("negative timestamp", wire(valid_event(ts=-1)), "bad_timestamp"),
    ("timestamp in year 3000", wire(valid_event(ts=32_503_680_000_000)), "bad_timestamp"),
    ("a day and 1 ms ahead", wire(valid_event(ts=NOW_MS + MAX_AHEAD_MS + 1)), "bad_timestamp"),
]


@pytest.mark.parametrize(
    ("raw", "reason"), [case[1:] for case in INVALID_EVENTS], ids=[c[0] for c in INVALID_EVENTS]
)
def test_an_invalid_event_is_refused_with_its_reason(raw: bytes | str | None, reason: str) -> None:
    with pytest.raises(InvalidRecord) as refused:
        decode_event(raw, now_ms=NOW_MS)
    assert refused.value.reason == reason, refused.value.detail
    assert refused.value.detail


def test_a_purchase_carries_its_quantity_and_an_event_without_one_has_one() -> None:
    bought = decode_event(wire(valid_event(type="purchase", quantity=3)), now_ms=NOW_MS)
    assert bought.quantity == 3
    assert decode_event(encode_event(bought), now_ms=NOW_MS) == bought
    assert decode_event(wire(valid_event(type="purchase")), now_ms=NOW_MS).quantity == 1
    assert b"quantity" not in encode_event(replace(bought, quantity=1))


def test_every_reason_a_record_can_have_is_shown_above() -> None:
    shown = {reason for *_, reason in INVALID_EVENTS}
    assert shown == set(REASONS) - {"duplicate"}  # duplicates are the worker's to find


def test_an_invalid_record_is_a_value_error_naming_its_reason() -> None:
    with pytest.raises(ValueError, match=r"^unknown_type: "):
        decode_event(wire(valid_event(type="like")), now_ms=NOW_MS)


@pytest.mark.parametrize(
    "ts",
    [MIN_TS_MS, NOW_MS, NOW_MS + MAX_AHEAD_MS],
    ids=["2000-01-01 exactly", "now", "exactly a day ahead"],
)
def test_timestamps_at_the_limits_are_accepted(ts: int) -> None:
    assert decode_event(wire(valid_event(ts=ts)), now_ms=NOW_MS).ts == ts


def test_historic_events_are_valid_against_the_wall_clock() -> None:
    assert decode_event(wire(valid_event(ts=1_569_888_000_000))).ts == 1_569_888_000_000


def test_a_record_just_under_the_size_limit_is_accepted() -> None:
    obj = valid_event(context={"note": "x" * MAX_TEXT_CHARS})
    raw = wire(obj)
    assert len(raw) <= MAX_RECORD_BYTES
    assert decode_event(raw, now_ms=NOW_MS).context == {"note": "x" * MAX_TEXT_CHARS}


VALID_EVENTS = [
    (
        "every field",
        Event(
            event_id="e-1",
            ts=1_732_240_000_123,
            type="purchase",
            user_id="u1",
            item_id="i9",
            item=ItemContent(category="electronics.phone", brand="acme", price=199.0),
            session_id="s1",
            context={"device": "mobile", "page": "search"},
        ),
    ),
    ("required fields only", Event("e-2", 1_732_240_000_123, "click", "u1", "i9")),
    ("an impression", Event("e-3", 1_732_240_000_123, "impression", "u1", "i9")),
    ("free price", Event("e-4", MIN_TS_MS, "cart", "u1", "i9", item=ItemContent(price=0.0))),
    ("empty item content", Event("e-5", MIN_TS_MS, "cart", "u1", "i9", item=ItemContent())),
    ("non-ASCII text", Event("e-6", MIN_TS_MS, "click", "ユーザー", "i9", ItemContent("家電"))),
]


@pytest.mark.parametrize("event", [e for _, e in VALID_EVENTS], ids=[n for n, _ in VALID_EVENTS])
def test_a_valid_event_round_trips_through_encode_and_decode(event: Event) -> None:
    raw = encode_event(event)
    assert decode_event(raw, now_ms=NOW_MS) == event
    assert decode_event(raw.decode(), now_ms=NOW_MS) == event


def test_optional_fields_absent_are_fine_and_read_as_none() -> None:
    obj = valid_event(item=None, session_id=None, context=None)
    event = decode_event(wire(obj), now_ms=NOW_MS)
    assert (event.item, event.session_id, event.context) == (None, None, None)
    partial = decode_event(wire(valid_event(item={"brand": "acme"})), now_ms=NOW_MS)
    assert partial.item == ItemContent(brand="acme")


def test_absent_optional_fields_are_left_out_on_the_wire() -> None:
    encoded = json.loads(encode_event(Event("e-2", 1_732_240_000_123, "click", "u1", "i9")))
    assert set(encoded) == {"schema", "event_id", "ts", "type", "user_id", "item_id"}


def test_what_our_producers_write_carries_the_current_schema_version() -> None:
    event = json.loads(encode_event(Event("e-2", 1_732_240_000_123, "click", "u1", "i9")))
    item = json.loads(encode_catalog_item(CatalogItem("i9", 1_732_240_000_123)))
    assert event["schema"] == item["schema"] == SCHEMA_VERSION == 2


@pytest.mark.parametrize("version", [None, 1, 2], ids=["no field (version 1)", "1", "2"])
def test_records_of_every_known_version_read_the_same(version: int | None) -> None:
    """Version 1 is the contract before ``schema`` existed: the worker still reads it."""
    obj = valid_event() if version is None else valid_event(schema=version)
    assert "schema" not in valid_event()
    assert decode_event(wire(obj), now_ms=NOW_MS) == decode_event(
        wire(valid_event()), now_ms=NOW_MS
    )
    catalog = {"item_id": "i9", "ts": 1_732_240_000_123, "category": "c"}
    if version is not None:
        catalog["schema"] = version
    assert decode_catalog_item(wire(catalog), now_ms=NOW_MS) == CatalogItem(
        "i9", 1_732_240_000_123, "c"
    )


def test_an_empty_context_reads_as_no_context_so_it_round_trips() -> None:
    event = decode_event(wire(valid_event(context={})), now_ms=NOW_MS)
    assert event.context is None
    assert decode_event(encode_event(event), now_ms=NOW_MS) == event


def test_an_integer_price_reads_as_a_float() -> None:
    event = decode_event(wire(valid_event(item__price=5)), now_ms=NOW_MS)
    assert event.item is not None
    assert event.item.price == 5.0
    assert isinstance(event.item.price, float)


@pytest.mark.parametrize(
    "item",
    [
        CatalogItem("i9", 1_732_240_000_123, "electronics.phone", "acme", 12.5),
        CatalogItem("i10", 1_732_240_000_123, category="2053013555631882655"),
        CatalogItem("i11", MIN_TS_MS),
        CatalogItem("i12", MIN_TS_MS, "home.lamp", available=False),
    ],
    ids=["full content", "category only", "no content", "withdrawn"],
)
def test_a_catalog_item_round_trips(item: CatalogItem) -> None:
    assert decode_catalog_item(encode_catalog_item(item), now_ms=NOW_MS) == item


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ts": 1732240000123, "category": "c"}', "missing_field"),
        (b'{"item_id": "i9", "ts": 1732240000123, "price": -5}', "bad_price"),
        (b'{"item_id": "i9", "ts": 99, "price": 5}', "bad_timestamp"),
        (b'{"item_id": "i9", "ts": 1732240000123, "brand": 3}', "wrong_type"),
        (b"[]", "not_object"),
        (b'{"item_id": "i9", "ts": 1732240000123, "available": "no"}', "wrong_type"),
        (b'{"item_id": "i9", "ts": 1732240000123, "available": 0}', "wrong_type"),
        (b'{"schema": 3, "item_id": "i9", "ts": 1732240000123}', "unknown_schema"),
    ],
    ids=[
        "no item_id",
        "negative price",
        "timestamp in 1970",
        "brand as a number",
        "an array",
        "available as a string",
        "available as a number",
        "a later schema version",
    ],
)
def test_an_invalid_catalog_item_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecord) as refused:
        decode_catalog_item(raw, now_ms=NOW_MS)
    assert refused.value.reason == reason


def test_available_true_or_absent_or_null_is_available_and_false_withdraws() -> None:
    read = [
        decode_catalog_item(wire({"item_id": "i9", "ts": MIN_TS_MS, **extra}), now_ms=NOW_MS)
        for extra in ({}, {"available": True}, {"available": None}, {"available": False})
    ]
    assert [item.available for item in read] == [True, True, True, False]
    assert "available" not in json.loads(encode_catalog_item(read[0]))


def test_a_tombstone_on_items_removes_the_item_its_key_names() -> None:
    assert decode_catalog_record(b"i9", None) == CatalogRemoval("i9")
    assert decode_catalog_record("ユーザー".encode(), None) == CatalogRemoval("ユーザー")
    item = encode_catalog_item(CatalogItem("i9", MIN_TS_MS))
    assert decode_catalog_record(b"i9", item, now_ms=NOW_MS) == CatalogItem("i9", MIN_TS_MS)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, None, "missing_field"),
        (b"", None, "missing_field"),
        (b"\xff\xfe", None, "not_utf8"),
        (b"i" * (MAX_ID_CHARS + 1), None, "too_long"),
        (b"i9", b"", "empty"),
    ],
    ids=["tombstone without a key", "empty key", "key not UTF-8", "key too long", "empty value"],
)
def test_a_tombstone_needs_an_item_id_as_key_and_an_empty_value_is_none(key, value, reason):
    with pytest.raises(InvalidRecord) as refused:
        decode_catalog_record(key, value, now_ms=NOW_MS)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("good", "bad", "reason"),
    [
        (1.0, True, "wrong_type"),  # equal and hash alike, but a bool is no price
        (1, "1", "wrong_type"),
        (0.0, -0.5, "bad_price"),
    ],
)
def test_item_content_checked_once_is_not_taken_for_a_bad_one_of_another_type(good, bad, reason):
    accepted = decode_event(wire(valid_event(item__price=good)), NOW_MS)
    again = decode_event(wire(valid_event(event_id="e-2", item__price=good)), NOW_MS)
    assert again.item is accepted.item  # one object per distinct content
    with pytest.raises(InvalidRecord) as bad_record:
        decode_event(wire(valid_event(event_id="e-3", item__price=bad)), NOW_MS)
    assert bad_record.value.reason == reason


def test_unhashable_item_content_is_still_checked():
    with pytest.raises(InvalidRecord) as bad:
        decode_event(wire(valid_event(item__category=["toys"])), NOW_MS)
    assert bad.value.reason == "wrong_type" and "item.category" in str(bad.value)
