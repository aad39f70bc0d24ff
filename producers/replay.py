"""Replay real e-commerce logs (in event-time order) and recordings as contract records.

Two public logs are understood (see docs/contracts.md, "Real logs"), and our
own recordings:

- ``rees46``: REES46 / Open CDP "eCommerce behavior data from multi category
  store", with the header ``event_time,event_type,product_id,category_id,
  category_code,brand,price,user_id,user_session``. ``view`` becomes ``click``;
  ``cart`` and ``purchase`` keep their names; ``remove_from_cart`` is counted
  and skipped. Item content: category = ``category_code``, or the
  ``category_id`` when the code is empty; brand; price.
- ``taobao``: Alibaba Tianchi UserBehavior, no header, columns
  ``user_id,item_id,category_id,behavior,timestamp`` (Unix seconds). ``pv``
  becomes ``click``, ``buy`` becomes ``purchase``, ``cart`` stays; ``fav`` is
  counted and skipped. Item content: category = ``category_id``.
- ``recstream``: a recording of what was sent (:mod:`producers.recording`):
  JSON lines, each the wire JSON of one event or catalog item. Its records
  are replayed as they were recorded, in file order (the order they were
  sent, not re-sorted), with their own ids and catalog items: no item is
  announced by the replay. Each line is a row; a bad one is rejected with
  the contract's reason (``not_json``, ``missing_field``, ...) and counted.

Each line of a CSV log is one row (blank lines are ignored). A row becomes an
:class:`~producers.contract.Event` checked by
:func:`~producers.contract.validate_event`; its ``event_id`` is
``<id_prefix>-<line number>`` (the prefix defaults to ``<format>-<file stem>``),
so replaying the same file again yields the same ids and the worker drops the
repeats. The first time an item is replayed, a
:class:`~producers.contract.CatalogItem` with its content comes just before the
event, ready for the ``items`` topic; an item seen only in skipped rows (only
ever a ``fav``) is announced too, so a skipped row is checked like any other.

Nothing is lost silently: every row is either emitted, skipped (a known
non-funnel type such as ``fav``) or rejected with one reason, and
:class:`ReplayStats` counts them while the replay is iterated. Reasons are the
contract's (:data:`producers.contract.REASONS`: ``unknown_type``,
``bad_price``, ``bad_timestamp``, ``not_utf8``, ...) plus the replay's own
:data:`REPLAY_REASONS`: ``malformed_row`` (not the format's number of columns,
e.g. a line cut off at the end of the file) and ``out_of_order`` (a row
earlier than what a bounded reorder window has already replayed).

Ordering and memory (the CSV logs):

- REES46 months are GBs and sorted by time: they are streamed line by line
  through a reorder window of :data:`DEFAULT_REORDER_ROWS` rows (a heap; stable
  for equal timestamps), so memory stays bounded.
- Taobao files are sorted by user: they are sorted whole. The data lines are
  held in one byte buffer with three 8-byte numbers each (end, line number,
  time), and are parsed in time order: memory is the file's size plus about
  32 bytes a row (the whole 100M-row UserBehavior.csv, 3.7 GB, would need
  about 7 GB). For a file that big, sort it by time first
  (``sort -t, -k5,5n -s``) and replay it with ``reorder_rows=10_000``.
- Either way the set of items already announced grows with distinct items.

Example
-------
>>> import pathlib, tempfile
>>> log = pathlib.Path(tempfile.mkdtemp()) / "UserBehavior.csv"
>>> _ = log.write_text("1,i9,c3,pv,1511544070\\n1,i9,c3,buy,1511544090\\n"
...                    "2,i9,c3,fav,1511544100\\n2,i7,c3,pv,1511544000\\n3,i5,c4,fav,1511544200\\n")
>>> run = replay(log)
>>> run.format
'taobao'
>>> for record in run:
...     print(getattr(record, "type", "catalog"), record.item_id, record.ts)
catalog i7 1511544000000
click i7 1511544000000
catalog i9 1511544070000
click i9 1511544070000
purchase i9 1511544090000
catalog i5 1511544200000
>>> print(run.stats.summary())
5 rows: 3 events (click 2, purchase 1), 2 skipped (fav 2), 0 rejected; 3 catalog items

A recording of that stream, with a line cut off at the end, replayed as it was sent:

>>> from producers.recording import recorded
>>> rec = log.with_name("stream.jsonl")
>>> sent = list(recorded(run, rec))
>>> with rec.open("a") as file:
...     _ = file.write('{"event_id":"taobao-UserBehavior-9","ts":15115')
>>> again = replay(rec)
>>> again.format, list(again) == sent
('recstream', True)
>>> print(again.stats.summary())
7 rows: 3 events (click 2, purchase 1), 0 skipped, 1 rejected (not_json 1); 3 catalog items
"""

from __future__ import annotations

import csv
import heapq
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from producers.contract import (
    EVENT_TYPES,
    MAX_RECORD_BYTES,
    CatalogItem,
    Event,
    InvalidRecord,
    ItemContent,
    validate_catalog_item,
    validate_event,
)
from producers.recording import FORMAT as RECORDING
from producers.recording import decode_record

FORMATS: tuple[str, ...] = ("rees46", "taobao", RECORDING)

REPLAY_REASONS: tuple[str, ...] = ("malformed_row", "out_of_order")
"""Rejection reasons of the replay itself, beside the contract's ``REASONS``."""

DEFAULT_REORDER_ROWS = 10_000
"""Rows held back to put a nearly sorted log (REES46) in order."""

REES46_HEADER: tuple[str, ...] = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)

Record = Event | CatalogItem


class _Rejected(ValueError):
    """A row refused for one of :data:`REPLAY_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REPLAY_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- statistics


@dataclass
class ReplayStats:
    """What a replay did with each row; filled while the replay is iterated.

    Once the iteration is over, ``rows == events + skipped + rejected`` for
    a CSV log; a recording's catalog items are rows of their own, so there
    ``rows == events + catalog_items + rejected``. ``rows_by_type`` counts
    the rows of each raw type the format knows (a recording's: the event
    types and ``catalog``; an unknown type is counted under
    ``rejected_by_reason["unknown_type"]``).
    ``first_rejections`` keeps, per reason, where it happened first and why.
    """

    rows: int = 0
    rows_by_type: Counter[str] = field(default_factory=Counter)
    events_by_type: Counter[str] = field(default_factory=Counter)
    skipped_by_type: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    first_rejections: dict[str, str] = field(default_factory=dict)
    catalog_items: int = 0

    @property
    def events(self) -> int:
        return self.events_by_type.total()

    @property
    def skipped(self) -> int:
        return self.skipped_by_type.total()

    @property
    def rejected(self) -> int:
        return self.rejected_by_reason.total()

    def reject(self, reason: str, line_no: int, detail: str) -> None:
        """Count one rejected row."""
        self.rejected_by_reason[reason] += 1
        self.first_rejections.setdefault(reason, f"line {line_no}: {detail}")

    def summary(self) -> str:
        """One human line: rows, then what became of them."""
        events = Counter({t: self.events_by_type[t] for t in EVENT_TYPES if self.events_by_type[t]})
        return (
            f"{self.rows:,} rows: {self.events:,} events{_breakdown(events)}, "
            f"{self.skipped:,} skipped{_breakdown(self.skipped_by_type)}, "
            f"{self.rejected:,} rejected{_breakdown(self.rejected_by_reason)}; "
            f"{self.catalog_items:,} catalog items"
        )


def _breakdown(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{key} {n:,}" for key, n in counts.items()) + ")"


# ---------------------------------------------------------------- formats


@dataclass(frozen=True, slots=True)
class _Format:
    """How one log's rows map onto the event contract."""

    name: str
    header: tuple[str, ...] | None
    columns: int
    type_column: int
    ts_column: int
    parse_ts: Callable[[str], int]  # the time column's text -> ms
    event_types: dict[str, str]  # raw type -> contract type
    skipped_types: frozenset[str]
    to_object: Callable[[list[str]], dict[str, Any]]  # all but event_id and type
    reorder_rows: int | None  # the default: None sorts the whole file


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_INT64 = 2**63 - 1


@lru_cache(maxsize=4096)  # sorted logs repeat the same second over and over
def _rees46_ms(text: str) -> int:
    """``2019-10-01 00:00:00 UTC`` as milliseconds since the epoch."""
    if len(text) == 23 and text.endswith(" UTC"):
        try:
            moment = datetime.fromisoformat(text[:19])
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is None:
            return (moment.replace(tzinfo=UTC) - _EPOCH) // _MS
    raise InvalidRecord(
        "bad_timestamp", f"event_time {text[:40]!r} is not like '2019-10-01 00:00:00 UTC'"
    )


def _price(text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidRecord("bad_price", f"price {text[:40]!r} is not a number") from None


def _rees46_object(fields: list[str]) -> dict[str, Any]:
    event_time, _, product_id, category_id, category_code, brand, price, user_id, session = fields
    return {
        "ts": _rees46_ms(event_time),
        "user_id": user_id,
        "item_id": product_id,
        "item": {
            "category": category_code or category_id or None,
            "brand": brand or None,
            "price": _price(price),
        },
        "session_id": session or None,
    }


def _taobao_ms(text: str) -> int:
    """Unix seconds as milliseconds."""
    try:
        return int(text) * 1000
    except ValueError:
        detail = f"timestamp {text[:40]!r} is not Unix seconds"
        raise InvalidRecord("bad_timestamp", detail) from None


def _taobao_object(fields: list[str]) -> dict[str, Any]:
    user_id, item_id, category_id, _, timestamp = fields
    return {
        "ts": _taobao_ms(timestamp),
        "user_id": user_id,
        "item_id": item_id,
        "item": {"category": category_id or None},
    }


_FORMATS: dict[str, _Format] = {
    "rees46": _Format(
        name="rees46",
        header=REES46_HEADER,
        columns=len(REES46_HEADER),
        type_column=1,
        ts_column=0,
        parse_ts=_rees46_ms,
        event_types={"view": "click", "cart": "cart", "purchase": "purchase"},
        skipped_types=frozenset({"remove_from_cart"}),
        to_object=_rees46_object,
        reorder_rows=DEFAULT_REORDER_ROWS,
    ),
    "taobao": _Format(
        name="taobao",
        header=None,
        columns=5,
        type_column=3,
        ts_column=4,
        parse_ts=_taobao_ms,
        event_types={"pv": "click", "cart": "cart", "buy": "purchase"},
        skipped_types=frozenset({"fav"}),
        to_object=_taobao_object,
        reorder_rows=None,
    ),
}


def _split(text: str) -> list[str]:
    if '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader([text]))
    except csv.Error as err:
        raise _Rejected("malformed_row", f"not CSV ({err})") from None


def _first_line(path: Path) -> list[str]:
    with path.open("rb") as file:
        line = file.readline(MAX_RECORD_BYTES).rstrip(b"\r\n")
    return _split(line.decode("utf-8", errors="replace"))


def _first_nonblank_line(path: Path) -> bytes:
    with path.open("rb") as file:
        for raw in file:
            line = raw.strip()
            if line:
                return line[:MAX_RECORD_BYTES]
    return b""


def guess_format(path: str | Path) -> str:
    """The format of a log, from its first line.

    A recording (``recstream``) is recognised by its first non-blank line
    starting with ``{``; a CSV log by its first line. Raises ``ValueError``
    if that line is neither a JSON object, the REES46 header nor a Taobao
    UserBehavior row.
    """
    if _first_nonblank_line(Path(path)).startswith(b"{"):
        return RECORDING
    fields = _first_line(Path(path))
    if tuple(fields) == REES46_HEADER:
        return "rees46"
    taobao = _FORMATS["taobao"]
    if len(fields) == taobao.columns and fields[taobao.type_column] in (
        taobao.event_types.keys() | taobao.skipped_types
    ):
        return "taobao"
    raise ValueError(
        f"{path}: neither a recording nor a REES46 or Taobao UserBehavior log (formats: {FORMATS})"
    )


# ---------------------------------------------------------------- the replay


class Replay:
    """An iterable over the records of one log, in event-time order (a recording: in file order).

    Each iteration reads the file again and starts a fresh :attr:`stats`.
    Build it with :func:`replay`.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        reorder_rows: int | None,
        now_ms: int | None,
        id_prefix: str,
    ) -> None:
        self.path = path
        self.format = fmt
        self.reorder_rows = reorder_rows
        self.now_ms = now_ms
        self.id_prefix = id_prefix
        self.stats = ReplayStats()
        self._spec = _FORMATS.get(fmt)  # None for a recording

    def __iter__(self) -> Iterator[Record]:
        self.stats = stats = ReplayStats()
        if self._spec is None:
            return self._recorded(stats)
        if self.reorder_rows is None:
            records = (record for _, record in self._parsed(self._lines_by_time(), stats))
        else:
            records = _reordered(self._parsed(self._lines(), stats), self.reorder_rows, stats)
        return _announced(records, stats)

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """The data lines with their line numbers, in file order (header and blanks left out)."""
        first_data_line = 2 if self._spec is not None and self._spec.header else 1
        with self.path.open("rb") as file:
            for line_no, raw in enumerate(file, start=1):
                line = raw.rstrip(b"\r\n")
                if line and line_no >= first_data_line:
                    yield line_no, line

    def _recorded(self, stats: ReplayStats) -> Iterator[Record]:
        """A recording's records in file order; count every line, reject the bad ones."""
        for line_no, line in self._lines():
            stats.rows += 1
            try:
                record = decode_record(line, self.now_ms)
            except InvalidRecord as bad:
                stats.reject(bad.reason, line_no, bad.detail)
                continue
            if isinstance(record, Event):
                stats.rows_by_type[record.type] += 1
                stats.events_by_type[record.type] += 1
            else:
                stats.rows_by_type["catalog"] += 1
                stats.catalog_items += 1
            yield record

    def _lines_by_time(self) -> Iterator[tuple[int, bytes]]:
        """The data lines sorted by time (stable): all of them held in one buffer."""
        text = bytearray()
        ends, line_numbers, times = array("q"), array("q"), array("q")
        for line_no, line in self._lines():
            text += line
            ends.append(len(text))
            line_numbers.append(line_no)
            times.append(self._sort_key(line))
        for row in np.argsort(np.frombuffer(times, dtype=np.int64), kind="stable"):
            yield line_numbers[row], text[ends[row - 1] if row else 0 : ends[row]]

    def _sort_key(self, line: bytes) -> int:
        """A row's time in ms; 0 when it has none (it is rejected when parsed)."""
        spec = self._spec
        try:
            ts = spec.parse_ts(_split(line.decode("utf-8"))[spec.ts_column])
        except (UnicodeDecodeError, IndexError, InvalidRecord, _Rejected):
            return 0
        return min(max(ts, 0), _MAX_INT64)

    def _parsed(
        self, lines: Iterable[tuple[int, bytes]], stats: ReplayStats
    ) -> Iterator[tuple[int, Record]]:
        """Each row's record with its line number; count every row, reject the bad ones."""
        for line_no, line in lines:
            stats.rows += 1
            try:
                yield line_no, self._parse(line_no, line, stats)
            except (InvalidRecord, _Rejected) as bad:
                stats.reject(bad.reason, line_no, bad.detail)

    def _parse(self, line_no: int, line: bytes, stats: ReplayStats) -> Record:
        """The event of one row, or for a skipped type its item; raise if it is bad."""
        spec = self._spec
        if len(line) > MAX_RECORD_BYTES:
            raise InvalidRecord("oversized", f"{len(line)} bytes is over {MAX_RECORD_BYTES}")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRecord("not_utf8", f"not UTF-8 text ({err.reason})") from None
        fields = _split(text)
        if len(fields) != spec.columns:
            raise _Rejected("malformed_row", f"{len(fields)} columns, expected {spec.columns}")
        raw_type = fields[spec.type_column]
        event_type = spec.event_types.get(raw_type)
        if event_type is None and raw_type not in spec.skipped_types:
            raise InvalidRecord("unknown_type", f"{spec.name} event type {raw_type[:40]!r}")
        stats.rows_by_type[raw_type] += 1
        obj = spec.to_object(fields)
        if event_type is None:
            item = validate_catalog_item(
                {"item_id": obj["item_id"], "ts": obj["ts"], **obj["item"]}, self.now_ms
            )
            stats.skipped_by_type[raw_type] += 1
            return item
        obj["event_id"] = f"{self.id_prefix}-{line_no}"
        obj["type"] = event_type
        return validate_event(obj, self.now_ms)


def replay(
    path: str | Path,
    fmt: str | None = None,
    *,
    reorder_rows: int | Literal["auto"] | None = "auto",
    now_ms: int | None = None,
    id_prefix: str | None = None,
) -> Replay:
    """Replay a REES46 or Taobao UserBehavior CSV log, or a recording, as contract records.

    Parameters
    ----------
    path
        The CSV file or recording.
    fmt
        One of :data:`FORMATS`; ``None`` guesses it from the first line.
    reorder_rows
        How many rows to hold back to restore time order (rows that come later
        than that are rejected as ``out_of_order``); ``None`` sorts the whole
        file in memory; ``"auto"`` is the format's default
        (:data:`DEFAULT_REORDER_ROWS` for REES46, whole-file for Taobao). A
        recording is always replayed in file order: only ``"auto"``.
    now_ms
        The clock events are checked against (events more than a day ahead
        of it are rejected); ``None`` is the wall clock.
    id_prefix
        Event ids are ``<id_prefix>-<line number>``; defaults to
        ``<format>-<file stem>``, so two months of one log never share an id.
        A recording's events keep their recorded ids.

    Raises
    ------
    ValueError
        For an unknown format, a negative window (any window for a
        recording), or a REES46 file without its header.
    """
    path = Path(path)
    fmt = guess_format(path) if fmt is None else fmt
    if fmt == RECORDING:
        if reorder_rows != "auto":
            raise ValueError(
                f"a recording is replayed in file order: no reorder_rows, not {reorder_rows}"
            )
        return Replay(path, fmt, None, now_ms, id_prefix or f"{fmt}-{path.stem}")
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    spec = _FORMATS[fmt]
    if spec.header is not None and tuple(_first_line(path)) != spec.header:
        raise ValueError(f"{path}: the first line is not the {fmt} header {','.join(spec.header)}")
    window = spec.reorder_rows if reorder_rows == "auto" else reorder_rows
    if window is not None and window < 0:
        raise ValueError(f"reorder_rows must be >= 0, not {window}")
    return Replay(path, fmt, window, now_ms, id_prefix or f"{fmt}-{path.stem}")


# ---------------------------------------------------------------- ordering


def _reordered(
    records: Iterable[tuple[int, Record]], window: int, stats: ReplayStats
) -> Iterator[Record]:
    """Records in time order through a heap of ``window`` rows; reject what comes too late."""
    heap: list[tuple[int, int, Record]] = []
    replayed_ts: int | None = None
    for line_no, record in records:
        if replayed_ts is not None and record.ts < replayed_ts:
            stats.reject(
                "out_of_order",
                line_no,
                f"ts {record.ts} is before {replayed_ts}, already replayed (reorder_rows={window})",
            )
            continue
        if len(heap) < window:
            heapq.heappush(heap, (record.ts, line_no, record))
        else:
            replayed_ts, _, earliest = heapq.heappushpop(heap, (record.ts, line_no, record))
            yield earliest
    while heap:
        yield heapq.heappop(heap)[2]


def _announced(records: Iterable[Record], stats: ReplayStats) -> Iterator[Record]:
    """Events, each item announced by a catalog record the first time it appears.

    A catalog record among ``records`` (from a skipped row) only announces its
    item, if that is new.
    """
    announced: set[str] = set()
    for record in records:
        if record.item_id not in announced:
            announced.add(record.item_id)
            stats.catalog_items += 1
            if isinstance(record, CatalogItem):
                yield record
                continue
            content = record.item or ItemContent()
            yield CatalogItem(
                record.item_id, record.ts, content.category, content.brand, content.price
            )
        if isinstance(record, Event):
            stats.events_by_type[record.type] += 1
            yield record
