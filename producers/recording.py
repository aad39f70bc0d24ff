"""Record a stream as it is sent, one wire JSON record per line, and read it back.

A *recording* (format ``recstream``) is a text file of JSON lines: each line
is exactly the compact JSON the product publishes for one record
(:func:`~producers.contract.encode_event` for an event,
:func:`~producers.contract.encode_catalog_item` for a catalog item), in the
order the records were sent, each followed by ``\\n`` (recordings made
before the contract's ``schema`` field are version 1 and read as well). An event object
always has ``event_id`` and ``type``; a catalog object has neither, so a line
whose object has either key is read as an event (one with ``event_id`` but
no ``type`` is then rejected as ``missing_field``), any other as a catalog
item. Reading a line back validates it under the contract
(:func:`~producers.contract.validate_event` /
:func:`~producers.contract.validate_catalog_item`): a bad line raises
:class:`~producers.contract.InvalidRecord` with one of its reasons.

:func:`recorded` wraps a stream on its way to the producer;
:func:`read_recording` reads a whole recording strictly (first bad line
raises). To replay a recording leniently, counting and skipping bad lines
like the CSV logs, use ``producers.replay.replay(path, "recstream")`` (and
``recstream produce|bench quality --source PATH``).

Example
-------
>>> import pathlib, tempfile
>>> from producers.contract import CatalogItem, Event
>>> path = pathlib.Path(tempfile.mkdtemp()) / "stream.jsonl"
>>> stream = [CatalogItem("i9", 1732240000000, "electronics.phone", "acme", 199.0),
...           Event("e-1", 1732240000123, "click", "u1", "i9")]
>>> sent = list(recorded(stream, path))  # what the producer would send, unchanged
>>> sent == stream
True
>>> print(path.read_text(), end="")
{"schema":2,"item_id":"i9","ts":1732240000000,"category":"electronics.phone","brand":"acme","price":199.0}
{"schema":2,"event_id":"e-1","ts":1732240000123,"type":"click","user_id":"u1","item_id":"i9"}
>>> list(read_recording(path, now_ms=1732240000500)) == stream
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from producers.contract import (
    CatalogItem,
    Event,
    InvalidRecord,
    _parse_object,  # the contract's own parser: the same checks (empty, oversized, not_json)
    encode_catalog_item,
    encode_event,
    validate_catalog_item,
    validate_event,
)

FORMAT = "recstream"
"""The name of the recording format (``--format recstream``)."""

Record = Event | CatalogItem


def encode_record(record: Record) -> bytes:
    """The wire JSON of one record, without the newline.

    >>> encode_record(CatalogItem("i1", 1732240000000))
    b'{"schema":2,"item_id":"i1","ts":1732240000000}'
    """
    if isinstance(record, Event):
        return encode_event(record)
    return encode_catalog_item(record)


def decode_record(line: bytes | str, now_ms: int | None = None) -> Record:
    """The record of one recorded line (without its newline); raise ``InvalidRecord`` if bad.

    ``now_ms`` is the clock timestamps are checked against, as for
    :func:`~producers.contract.decode_event` (``None``: the wall clock).

    >>> item = decode_record(b'{"item_id":"i1","ts":1732240000000,"price":2.5}', 1732240000000)
    >>> type(item).__name__, item.item_id, item.price
    ('CatalogItem', 'i1', 2.5)
    >>> try:
    ...     decode_record(b'{"event_id":"e-1","ts":1732240000000,"user_id":"u1"}')
    ... except InvalidRecord as bad:
    ...     print(bad.reason, "-", bad.detail)
    missing_field - type is required
    """
    obj = _parse_object(line)
    if "type" in obj or "event_id" in obj:
        return validate_event(obj, now_ms)
    return validate_catalog_item(obj, now_ms)


def recorded(
    records: Iterable[Record], path: str | Path, *, append: bool = False
) -> Iterator[Record]:
    """Yield every record unchanged, writing its wire JSON line to ``path`` first.

    The file is created (or emptied; with ``append=True`` added to), written
    through a buffer, and flushed and closed when the records run out or the
    generator is closed (``close()``, or garbage collection): iterate it to
    the end or close it. A record is written when it is handed on, before
    the caller has sent it, so a caller that stops after taking a record has
    recorded one more than it sent. Wrap the stream exactly as it goes to the
    producer (after any restamping such as
    :func:`~producers.simulator.on_wall_clock`), so the recording holds what
    was sent.
    """
    with Path(path).open("ab" if append else "wb") as file:
        yield from _written(records, file)


def _written(records: Iterable[Record], file: BinaryIO) -> Iterator[Record]:
    write = file.write
    for record in records:
        write(encode_record(record) + b"\n")
        yield record


def read_recording(path: str | Path, now_ms: int | None = None) -> Iterator[Record]:
    """The records of a recording in file order; blank lines are passed over.

    Strict: the first bad line raises :class:`~producers.contract.InvalidRecord`
    with its reason, the detail prefixed by ``line N:``.
    """
    with Path(path).open("rb") as file:
        for line_no, raw in enumerate(file, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                yield decode_record(line, now_ms)
            except InvalidRecord as bad:
                raise InvalidRecord(bad.reason, f"line {line_no}: {bad.detail}") from None
