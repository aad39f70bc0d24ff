"""The wire contract: events and catalog items, their JSON, and their validation.

Producers validate before sending (and refuse what fails); the worker runs the
same validation on what it reads and dead-letters what fails. Every failure is
an :class:`InvalidRecord` carrying one reason from :data:`REASONS` (a small,
fixed set: it is a Prometheus label) and a human-readable detail.

Every record written carries ``schema``, the contract version it follows
(:data:`SCHEMA_VERSION`); a reader accepts the versions in
:data:`SCHEMA_VERSIONS` (a record without the field is version 1, as every
record was before the field existed) and refuses any other as
``unknown_schema``, before reading any other field. A null value on the
compacted ``items`` topic (Kafka's tombstone) removes the item named by its
key (:class:`CatalogRemoval`).

Example
-------
>>> raw = (b'{"event_id": "e-1", "ts": 1732240000123, "type": "click", '
...        b'"user_id": "u1", "item_id": "i9", "item": {"category": "electronics.phone", '
...        b'"brand": "acme", "price": 199.0}}')
>>> event = decode_event(raw, now_ms=1732240000500)
>>> event.type, event.item.price
('click', 199.0)
>>> decode_event(encode_event(event), now_ms=1732240000500) == event
True
>>> decode_catalog_record(b"i9", None)
CatalogRemoval(item_id='i9')
>>> try:
...     decode_event(b'{"event_id": "e-2", "ts": 1732240000000, "type": "click"}',
...                  now_ms=1732240000500)
... except InvalidRecord as bad:
...     print(bad.reason, "-", bad.detail)
missing_field - user_id is required
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

EVENT_TYPES: tuple[str, ...] = ("impression", "click", "cart", "purchase")
FUNNEL_TYPES: tuple[str, ...] = ("click", "cart", "purchase")

MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AHEAD_MS = 86_400_000  # one day ahead of the reader's clock
MAX_RECORD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 1024
MAX_CONTEXT_KEYS = 32
MAX_QUANTITY = 10_000
"""The largest ``quantity`` an event may carry (units of the item in one order)."""

SCHEMA_VERSION = 2
"""The contract version our producers and the worker write (``schema`` in every record)."""
SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
"""The versions a reader accepts: 1 is a record without ``schema``, read as version 2."""

REASONS: tuple[str, ...] = (
    "empty",
    "oversized",
    "not_utf8",
    "not_json",
    "not_object",
    "unknown_schema",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "bad_price",
    "bad_quantity",
    "bad_timestamp",
    "too_long",
    "duplicate",
)
"""Every reason a record can be rejected for; ``duplicate`` is the worker's."""


class InvalidRecord(ValueError):
    """A record that breaks the contract: ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ItemContent:
    """What is known about an item's content: all optional."""

    category: str | None = None
    brand: str | None = None
    price: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One funnel event from a shop (see docs/contracts.md, "Event")."""

    event_id: str
    ts: int
    type: str
    user_id: str
    item_id: str
    item: ItemContent | None = None
    session_id: str | None = None
    context: dict[str, str] | None = field(default=None, hash=False)
    quantity: int = 1


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """An item as published on the compacted ``items`` topic.

    ``available=False`` withdraws it from serving (out of stock); the next
    record without it (or with ``True``) brings it back.
    """

    item_id: str
    ts: int
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    available: bool = True

    @property
    def content(self) -> ItemContent:
        return ItemContent(self.category, self.brand, self.price)


@dataclass(frozen=True, slots=True)
class CatalogRemoval:
    """A tombstone on ``items`` (a null value): the item its key names is gone from the shop."""

    item_id: str


# ---------------------------------------------------------------- encoding


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready dict of an event, leaving out absent optional fields."""
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "event_id": event.event_id,
        "ts": event.ts,
        "type": event.type,
        "user_id": event.user_id,
        "item_id": event.item_id,
    }
    if event.item is not None:
        out["item"] = _content_dict(event.item)
    if event.session_id is not None:
        out["session_id"] = event.session_id
    if event.context:
        out["context"] = dict(event.context)
    if event.quantity != 1:
        out["quantity"] = event.quantity
    return out


def encode_event(event: Event) -> bytes:
    """Compact UTF-8 JSON of an event."""
    return json.dumps(event_to_dict(event), separators=(",", ":")).encode()


def catalog_to_dict(item: CatalogItem) -> dict[str, Any]:
    """The JSON-ready dict of a catalog item (``available`` only when it is false)."""
    out = {"schema": SCHEMA_VERSION, "item_id": item.item_id, "ts": item.ts}
    out.update(_content_dict(item.content))
    if not item.available:
        out["available"] = False
    return out


def encode_catalog_item(item: CatalogItem) -> bytes:
    """Compact UTF-8 JSON of a catalog item."""
    return json.dumps(catalog_to_dict(item), separators=(",", ":")).encode()


def _content_dict(content: ItemContent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if content.category is not None:
        out["category"] = content.category
    if content.brand is not None:
        out["brand"] = content.brand
    if content.price is not None:
        out["price"] = content.price
    return out


# ---------------------------------------------------------------- decoding


def decode_event(raw: bytes | str | None, now_ms: int | None = None) -> Event:
    """Parse and validate one event; raise :class:`InvalidRecord` if it is bad.

    ``now_ms`` is the reader's clock (defaults to the wall clock): events more
    than a day ahead of it are rejected.
    """
    return validate_event(_parse_object(raw), now_ms)


def decode_catalog_item(raw: bytes | str | None, now_ms: int | None = None) -> CatalogItem:
    """Parse and validate one catalog record; raise :class:`InvalidRecord` if bad."""
    return validate_catalog_item(_parse_object(raw), now_ms)


def decode_catalog_record(
    key: bytes | None, value: bytes | None, now_ms: int | None = None
) -> CatalogItem | CatalogRemoval:
    """One ``items`` message: a catalog record, or a tombstone (no value) removing its key.

    An empty value is no tombstone (``empty``); a tombstone needs the item id as its key.
    """
    if value is not None:
        return decode_catalog_item(value, now_ms)
    if not key:
        raise InvalidRecord("missing_field", "a tombstone needs the item id as its key")
    try:
        item_id = key.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidRecord(
            "not_utf8", f"the tombstone's key is not UTF-8 ({err.reason})"
        ) from None
    return CatalogRemoval(_required_str({"item_id": item_id}, "item_id"))


def validate_event(obj: dict[str, Any], now_ms: int | None = None) -> Event:
    """Check a decoded JSON object against the event contract."""
    _check_schema(obj)
    event_type = _required_str(obj, "type")
    if event_type not in EVENT_TYPES:
        raise InvalidRecord("unknown_type", f"type {event_type[:40]!r} is not one of {EVENT_TYPES}")
    item_obj = obj.get("item")
    if item_obj is not None and not isinstance(item_obj, dict):
        raise InvalidRecord("wrong_type", "item must be an object")
    return Event(
        event_id=_required_str(obj, "event_id"),
        ts=_timestamp(obj, now_ms),
        type=event_type,
        user_id=_required_str(obj, "user_id"),
        item_id=_required_str(obj, "item_id"),
        item=_content(item_obj, "item.") if item_obj is not None else None,
        session_id=_optional_str(obj.get("session_id"), "session_id", MAX_ID_CHARS),
        context=_context(obj.get("context")),
        quantity=_quantity(obj.get("quantity")),
    )


def _quantity(value: Any) -> int:
    """An event's ``quantity``: an integer from 1 to :data:`MAX_QUANTITY`, 1 when absent.

    >>> _quantity(None), _quantity(3)
    (1, 3)
    >>> _quantity(0)
    Traceback (most recent call last):
    ...
    producers.contract.InvalidRecord: bad_quantity: quantity must be an integer in [1, 10000], not 0
    """
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUANTITY:
        raise InvalidRecord(
            "bad_quantity",
            f"quantity must be an integer in [1, {MAX_QUANTITY}], not {value!r:.40}",
        )
    return value


def validate_catalog_item(obj: dict[str, Any], now_ms: int | None = None) -> CatalogItem:
    """Check a decoded JSON object against the catalog contract."""
    _check_schema(obj)
    content = _content(obj, "")
    available = obj.get("available")
    if available is not None and not isinstance(available, bool):
        raise InvalidRecord("wrong_type", f"available must be true or false, not {available!r:.40}")
    return CatalogItem(
        item_id=_required_str(obj, "item_id"),
        ts=_timestamp(obj, now_ms),
        category=content.category,
        brand=content.brand,
        price=content.price,
        available=available is not False,
    )


def _check_schema(obj: dict[str, Any]) -> None:
    """Refuse a record of a contract version this reader does not know (absent: version 1)."""
    version = obj.get("schema")
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version not in SCHEMA_VERSIONS:
        raise InvalidRecord(
            "unknown_schema", f"schema {version!r:.40} is not one of {SCHEMA_VERSIONS}"
        )


def _parse_object(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise InvalidRecord("empty", "the message has no value")
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord("oversized", f"{len(raw)} bytes is over the {MAX_RECORD_BYTES} limit")
    try:
        obj = orjson.loads(raw)  # strict RFC 8259 JSON in UTF-8, about 3x the standard library
    except orjson.JSONDecodeError:
        obj = _parse_leniently(raw)
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"a JSON {type(obj).__name__}, not an object")
    return obj


def _parse_leniently(raw: bytes | str | bytearray | memoryview) -> Any:
    """What the standard library makes of text orjson refused, or why it is not JSON.

    The standard library reads NaN and Infinity (so a NaN price is reported as
    ``bad_price``, not as ``not_json``) and integers of any size; for text that
    is not JSON at all it gives the reason the dead letter carries.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRecord("not_utf8", f"not UTF-8 text ({err.reason})") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise InvalidRecord("not_json", f"not JSON ({str(err)[:80]})") from None


def _required_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise InvalidRecord("missing_field", f"{key} is required")
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", f"{key} must be a string, not {type(value).__name__}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRecord("too_long", f"{key} has {len(value)} characters (max {MAX_ID_CHARS})")
    if not value.isascii():
        _require_utf8(value, key)
    return value


def _optional_str(value: Any, name: str, limit: int) -> str | None:
    """``value`` if it is None or a string of at most ``limit`` characters (``name`` in errors)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", f"{name} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise InvalidRecord("too_long", f"{name} has {len(value)} characters (max {limit})")
    if not value.isascii():
        _require_utf8(value, name)
    return value


def _require_utf8(value: str, label: str) -> None:
    # JSON escapes such as "\ud800" decode to lone surrogates, which no UTF-8 encoder accepts
    # (a Kafka key or a log line would fail far from here). Callers skip ASCII text: it is fine.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord("not_utf8", f"{label} holds a lone surrogate") from None


def _timestamp(obj: dict[str, Any], now_ms: int | None) -> int:
    value = obj.get("ts")
    if value is None:
        raise InvalidRecord("missing_field", "ts is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(
            "wrong_type", f"ts must be integer milliseconds, not {type(value).__name__}"
        )
    if value < MIN_TS_MS:
        raise InvalidRecord("bad_timestamp", f"ts {value} is before 2000-01-01")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if value > now + MAX_AHEAD_MS:
        raise InvalidRecord("bad_timestamp", f"ts {value} is more than a day ahead of {now}")
    return value


def _content(obj: dict[str, Any], label: str) -> ItemContent:
    category, brand, price = obj.get("category"), obj.get("brand"), obj.get("price")
    try:
        return _checked_content(category, brand, price, label)
    except TypeError:  # an unhashable value (a list, an object): checked without the cache
        return _checked_content.__wrapped__(category, brand, price, label)


@lru_cache(maxsize=1 << 16, typed=True)
def _checked_content(category: Any, brand: Any, price: Any, label: str) -> ItemContent:
    """The checked :class:`ItemContent` of these values, one object per distinct content.

    A shop sends the same item's content with every event; checking it once
    per distinct content (``typed``: ``1`` and ``True`` are not the same
    price) saves most of an event's decoding, and samples then share one
    object per content. A bad value raises every time (errors are not cached).
    """
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise InvalidRecord(
                "wrong_type", f"{label}price must be a number, not {type(price).__name__}"
            )
        try:
            price = float(price)
        except OverflowError:  # an integer literal too large for a float
            raise InvalidRecord("bad_price", f"{label}price is too large") from None
        if not math.isfinite(price) or price < 0:
            raise InvalidRecord("bad_price", f"{label}price {price} is not a finite number >= 0")
    return ItemContent(
        category=_optional_str(category, f"{label}category", MAX_TEXT_CHARS),
        brand=_optional_str(brand, f"{label}brand", MAX_TEXT_CHARS),
        price=price,
    )


def _context(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRecord("wrong_type", "context must be an object")
    if len(value) > MAX_CONTEXT_KEYS:
        raise InvalidRecord("too_long", f"context has {len(value)} keys (max {MAX_CONTEXT_KEYS})")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRecord("wrong_type", f"context.{key[:40]} must be a string")
        if len(key) > MAX_ID_CHARS or len(item) > MAX_TEXT_CHARS:
            raise InvalidRecord("too_long", f"context.{key[:40]} is too long")
        if not (key.isascii() and item.isascii()):
            _require_utf8(key + item, "context")
    return dict(value) or None  # an empty context is encoded as absent: decode it the same way
