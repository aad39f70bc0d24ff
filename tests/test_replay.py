"""Replaying real e-commerce logs: the counts of tests/data/PROVENANCE.md, in time order;
and recordings (producers.recording): written, read back, replayed in file order.

Expectations about each row are recomputed here with the csv module, independently
of producers.replay; the totals are the ones PROVENANCE.md states.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.contract import (
    MAX_RECORD_BYTES,
    CatalogItem,
    Event,
    InvalidRecord,
    ItemContent,
    decode_catalog_item,
    decode_event,
    encode_catalog_item,
    encode_event,
)
from producers.recording import encode_record, read_recording, recorded
from producers.replay import FORMATS, REES46_HEADER, Replay, guess_format, replay

DATA = Path(__file__).parent / "data"
REES46 = DATA / "rees46-2019-oct-head.csv"
TAOBAO = DATA / "taobao-userbehavior-sample.csv"
NOW_MS = 1_732_240_000_000  # 2024-11-22: the clock rows are checked against


@pytest.fixture(scope="module")
def rees46() -> tuple[Replay, list[Event | CatalogItem]]:
    run = replay(REES46, "rees46", now_ms=NOW_MS)
    return run, list(run)


@pytest.fixture(scope="module")
def taobao() -> tuple[Replay, list[Event | CatalogItem]]:
    run = replay(TAOBAO, "taobao", now_ms=NOW_MS)
    return run, list(run)


def events_of(records: list[Event | CatalogItem]) -> list[Event]:
    return [r for r in records if isinstance(r, Event)]


def line_of(event: Event) -> int:
    return int(event.event_id.rsplit("-", 1)[1])


def csv_rows(path: Path) -> dict[int, list[str]]:
    """Every row of a CSV file by its line number (one line per row in these files)."""
    with path.open(newline="") as file:
        return {line_no: row for line_no, row in enumerate(csv.reader(file), start=1)}


def first_sightings(rows: dict[int, CatalogItem]) -> dict[str, CatalogItem]:
    """Each item as first seen in time order (file order for equal times)."""
    first: dict[str, CatalogItem] = {}
    for _, item in sorted(rows.items(), key=lambda line_item: (line_item[1].ts, line_item[0])):
        first.setdefault(item.item_id, item)
    return first


def rees46_ms(time: str) -> int:
    moment = datetime.strptime(time, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


# ---------------------------------------------------------------- REES46


def test_rees46_sample_counts_are_those_of_its_provenance(rees46) -> None:
    run, _ = rees46
    stats = run.stats
    assert stats.rows == 17_434 + 1  # the complete rows and the cut-off last line
    assert stats.rows_by_type == {"view": 17_055, "cart": 165, "purchase": 214}
    assert stats.events_by_type == {"click": 17_055, "cart": 165, "purchase": 214}
    assert stats.skipped == 0
    assert stats.catalog_items == 6_493  # products
    assert stats.rows == stats.events + stats.skipped + stats.rejected


def test_rees46_cut_off_last_line_is_rejected_with_a_reason(rees46) -> None:
    run, _ = rees46
    last_line = len(REES46.read_bytes().splitlines())
    assert not REES46.read_bytes().endswith(b"\n")
    assert run.stats.rejected_by_reason == {"malformed_row": 1}
    assert run.stats.first_rejections["malformed_row"].startswith(f"line {last_line}: 8 columns")


def test_rees46_rows_map_onto_the_contract_field_by_field(rees46) -> None:
    _, records = rees46
    rows = csv_rows(REES46)
    assert tuple(rows[1]) == REES46_HEADER
    to_type = {"view": "click", "cart": "cart", "purchase": "purchase"}
    events = events_of(records)
    assert len(events) == 17_434
    for event in events:
        time, kind, product, category_id, code, brand, price, user, session = rows[line_of(event)]
        assert event == Event(
            event_id=f"rees46-rees46-2019-oct-head-{line_of(event)}",
            ts=rees46_ms(time),
            type=to_type[kind],
            user_id=user,
            item_id=product,
            item=ItemContent(code or category_id, brand or None, float(price) if price else None),
            session_id=session or None,
        )
    assert len({e.user_id for e in events}) == 4_504
    assert len({rows[line_of(e)][4] for e in events} - {""}) == 115  # category codes
    assert len({e.item.brand for e in events if e.item} - {None}) == 864
    assert min(e.ts for e in events) == 1_569_888_000_000  # 2019-10-01 00:00 UTC


def test_rees46_a_row_without_category_code_falls_back_to_category_id(rees46) -> None:
    _, records = rees46
    first = events_of(records)[0]
    assert first.item == ItemContent("2103807459595387724", "shiseido", 35.79)


def test_rees46_whole_file_sort_and_reorder_window_agree_on_a_sorted_log(rees46) -> None:
    _, windowed = rees46
    assert list(replay(REES46, reorder_rows=None, now_ms=NOW_MS)) == windowed


# ---------------------------------------------------------------- Taobao


def test_taobao_sample_counts_are_those_of_its_provenance(taobao) -> None:
    run, _ = taobao
    stats = run.stats
    assert stats.rows == 4_321
    assert stats.rows_by_type == {"pv": 3_926, "cart": 190, "fav": 128, "buy": 77}
    assert stats.events_by_type == {"click": 3_926, "cart": 190, "purchase": 77}
    assert stats.skipped_by_type == {"fav": 128}
    assert stats.rejected == 0
    assert stats.catalog_items == 3_276
    assert stats.rows == stats.events + stats.skipped + stats.rejected


def test_taobao_is_sorted_by_user_in_the_file_but_replayed_in_time_order(taobao) -> None:
    _, records = taobao
    file_times = [int(row[4]) for row in csv_rows(TAOBAO).values()]
    assert file_times != sorted(file_times)
    times = [r.ts for r in records]
    assert times == sorted(times)
    assert min(times) == min(file_times) * 1000
    assert datetime.fromtimestamp(min(times) / 1000, UTC).date().isoformat() == "2017-09-11"


def test_taobao_rows_map_onto_the_contract_field_by_field(taobao) -> None:
    _, records = taobao
    rows = csv_rows(TAOBAO)
    to_type = {"pv": "click", "cart": "cart", "buy": "purchase"}
    for event in events_of(records):
        user, item, category, behavior, timestamp = rows[line_of(event)]
        assert event == Event(
            event_id=f"taobao-taobao-userbehavior-sample-{line_of(event)}",
            ts=int(timestamp) * 1000,
            type=to_type[behavior],
            user_id=user,
            item_id=item,
            item=ItemContent(category=category),
        )


def test_taobao_fav_rows_are_skipped_but_still_announce_their_items(taobao) -> None:
    _, records = taobao
    rows = csv_rows(TAOBAO).values()
    fav_only = {r[1] for r in rows if r[3] == "fav"} - {r[1] for r in rows if r[3] != "fav"}
    assert fav_only  # the sample has items that were only ever favourited
    assert fav_only <= {r.item_id for r in records if isinstance(r, CatalogItem)}
    assert not fav_only & {e.item_id for e in events_of(records)}


# ---------------------------------------------------------------- both logs


@pytest.fixture(params=["rees46", "taobao"])
def replayed(request, rees46, taobao) -> list[Event | CatalogItem]:
    return {"rees46": rees46, "taobao": taobao}[request.param][1]


def test_every_record_is_valid_under_the_contract(replayed) -> None:
    for record in replayed:
        if isinstance(record, Event):
            assert decode_event(encode_event(record), now_ms=NOW_MS) == record
        else:
            assert decode_catalog_item(encode_catalog_item(record), now_ms=NOW_MS) == record


def test_records_come_in_event_time_order_stable_for_equal_times(replayed) -> None:
    events = events_of(replayed)
    assert [(e.ts, line_of(e)) for e in events] == sorted((e.ts, line_of(e)) for e in events)
    times = [r.ts for r in replayed]
    assert times == sorted(times)


def test_each_item_is_announced_once_before_its_first_event(replayed) -> None:
    announced: set[str] = set()
    for record in replayed:
        if isinstance(record, CatalogItem):
            assert record.item_id not in announced
            announced.add(record.item_id)
        else:
            assert record.item_id in announced


def test_rees46_catalog_items_carry_the_content_of_their_first_row(rees46) -> None:
    _, records = rees46
    rows = {
        line_no: CatalogItem(
            row[2], rees46_ms(row[0]), row[4] or row[3], row[5] or None, float(row[6])
        )
        for line_no, row in csv_rows(REES46).items()
        if line_no > 1 and len(row) == len(REES46_HEADER)
    }
    assert [r for r in records if isinstance(r, CatalogItem)] == list(
        first_sightings(rows).values()
    )


def test_taobao_catalog_items_carry_the_content_of_their_first_row(taobao) -> None:
    _, records = taobao
    rows = {
        line_no: CatalogItem(item, int(timestamp) * 1000, category)
        for line_no, (_, item, category, _, timestamp) in csv_rows(TAOBAO).items()
    }
    assert [r for r in records if isinstance(r, CatalogItem)] == list(
        first_sightings(rows).values()
    )


def test_replaying_again_gives_the_same_records_and_fresh_counts(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_bytes(TAOBAO.read_bytes()[:20_000].rsplit(b"\n", 1)[0] + b"\n")
    run = replay(log, now_ms=NOW_MS)
    first, first_stats = list(run), run.stats
    assert list(run) == first
    assert run.stats == first_stats
    assert run.stats is not first_stats
    assert len({e.event_id for e in events_of(first)}) == first_stats.events


# ---------------------------------------------------------------- defects


REES46_TEXT_HEADER = ",".join(REES46_HEADER)


def rees46_row(
    time: str = "2019-10-01 00:00:00 UTC",
    kind: str = "view",
    product: str = "1001",
    price: str = "9.99",
    brand: str = "acme",
) -> str:
    return f"{time},{kind},{product},2053013555631882655,electronics.phone,{brand},{price},7,s-1"


def test_defective_rows_are_each_rejected_with_their_reason_and_none_is_lost(
    tmp_path: Path,
) -> None:
    lines = [
        REES46_TEXT_HEADER,
        rees46_row(),  # 2: fine
        rees46_row(price="abc"),  # 3
        rees46_row(price="-5.00"),  # 4
        rees46_row(price="nan"),  # 5
        rees46_row(kind="teleport"),  # 6
        rees46_row(time="yesterday at noon"),  # 7
        rees46_row(time="3000-01-01 00:00:00 UTC"),  # 8: far in the future
        rees46_row(time="1999-12-31 23:59:59 UTC"),  # 9: before 2000
        rees46_row(kind="remove_from_cart"),  # 10: known, not a funnel event
        "2019-10-01 00:00:01 UTC,cart,1001,",  # 11: too few columns
        "",  # 12: blank, not a row
        rees46_row(product="1002", brand='"acme, inc"', time="2019-10-01 00:00:02 UTC"),  # 13
        rees46_row(product="x" * 300),  # 14: an id too long for the contract
        rees46_row(kind="purchase", time="2019-10-01 00:00:03 UTC"),  # 15: fine
    ]
    text = "\r\n".join(lines).encode() + b"\r\n"
    text += rees46_row(brand="\udcff", kind="cart").encode(errors="surrogateescape")  # 16
    text += b"\r\n" + rees46_row(brand="b" * MAX_RECORD_BYTES).encode()  # 17, no final newline
    log = tmp_path / "defects.csv"
    log.write_bytes(text)

    run = replay(log, "rees46", now_ms=NOW_MS)
    records = list(run)
    stats = run.stats

    assert stats.rejected_by_reason == {
        "bad_price": 3,
        "unknown_type": 1,
        "bad_timestamp": 3,
        "malformed_row": 1,
        "too_long": 1,
        "not_utf8": 1,
        "oversized": 1,
    }
    assert stats.first_rejections["bad_price"].startswith("line 3: price 'abc'")
    assert stats.first_rejections["unknown_type"].startswith("line 6: ")
    assert stats.first_rejections["bad_timestamp"].startswith("line 7: ")
    assert stats.first_rejections["malformed_row"].startswith("line 11: ")
    assert stats.skipped_by_type == {"remove_from_cart": 1}
    assert [line_of(e) for e in events_of(records)] == [2, 13, 15]
    assert events_of(records)[1].item == ItemContent("electronics.phone", "acme, inc", 9.99)
    assert stats.rows == 15  # lines 2 to 17 but the blank one
    assert stats.events + stats.rejected + stats.skipped == stats.rows


def test_defective_taobao_rows_are_each_rejected_with_their_reason(tmp_path: Path) -> None:
    log = tmp_path / "UserBehavior.csv"
    log.write_text(
        "1,10,100,pv,1511544070\n"  # fine
        "1,10,100,pv,soon\n"  # bad_timestamp
        "1,10,100,pv,0\n"  # bad_timestamp: 1970
        ",10,100,pv,1511544070\n"  # missing_field: no user
        "1,10,100,like,1511544070\n"  # unknown_type
        "1,11,100,fav,1511544071\n"  # skipped, announces item 11
        "1,12,100,fav,later\n"  # bad_timestamp, even though fav is skipped
        "1,10,100,buy\n"  # malformed_row
        "1,10,100,buy,1511544000\n"  # fine, earliest
    )
    run = replay(log, now_ms=NOW_MS)
    records = list(run)
    assert run.format == "taobao"
    assert run.stats.rejected_by_reason == {
        "bad_timestamp": 3,
        "missing_field": 1,
        "unknown_type": 1,
        "malformed_row": 1,
    }
    assert run.stats.skipped_by_type == {"fav": 1}
    assert [(type(r).__name__, r.item_id, r.ts) for r in records] == [
        ("CatalogItem", "10", 1_511_544_000_000),
        ("Event", "10", 1_511_544_000_000),
        ("Event", "10", 1_511_544_070_000),
        ("CatalogItem", "11", 1_511_544_071_000),
    ]
    assert run.stats.rows == 9 == run.stats.events + run.stats.skipped + run.stats.rejected


# ---------------------------------------------------------------- ordering


def write_rees46(path: Path, seconds: list[int]) -> Path:
    rows = [rees46_row(time=f"2019-10-01 00:00:{s:02d} UTC", product=f"p{s}") for s in seconds]
    path.write_text("\n".join([REES46_TEXT_HEADER, *rows]) + "\n")
    return path


def test_rows_a_little_out_of_order_are_put_back_in_order(tmp_path: Path) -> None:
    log = write_rees46(tmp_path / "log.csv", [0, 2, 1, 3, 5, 4, 4, 6])
    run = replay(log, reorder_rows=2, now_ms=NOW_MS)
    events = events_of(list(run))
    assert [e.ts // 1000 % 60 for e in events] == [0, 1, 2, 3, 4, 4, 5, 6]
    assert [line_of(e) for e in events] == [2, 4, 3, 5, 7, 8, 6, 9]  # equal times: file order
    assert run.stats.rejected == 0


def test_a_row_later_than_the_reorder_window_is_rejected_out_of_order(tmp_path: Path) -> None:
    log = write_rees46(tmp_path / "log.csv", [5, 6, 7, 8, 1, 9])
    run = replay(log, reorder_rows=2, now_ms=NOW_MS)
    events = events_of(list(run))
    assert [e.ts // 1000 % 60 for e in events] == [5, 6, 7, 8, 9]
    assert run.stats.rejected_by_reason == {"out_of_order": 1}
    assert run.stats.first_rejections["out_of_order"].startswith("line 6: ")
    assert run.stats.rows == run.stats.events + run.stats.rejected


def test_the_whole_file_sort_needs_no_window(tmp_path: Path) -> None:
    log = write_rees46(tmp_path / "log.csv", [9, 8, 7, 1, 0])
    events = events_of(list(replay(log, reorder_rows=None, now_ms=NOW_MS)))
    assert [e.ts // 1000 % 60 for e in events] == [0, 1, 7, 8, 9]


# ---------------------------------------------------------------- formats


def test_the_format_is_guessed_from_the_first_line() -> None:
    assert guess_format(REES46) == "rees46"
    assert guess_format(TAOBAO) == "taobao"
    assert replay(TAOBAO).format == "taobao"
    assert set(FORMATS) == {"rees46", "taobao", "recstream"}


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        ("user,item,category,behavior,timestamp\n1,2,3,pv,4\n", None),
        ("1,2,3,pv,1511544070\n", "rees46"),
        ("", None),
        ("1,2,3,pv,1511544070\n", "amazon"),
    ],
    ids=["unknown header", "REES46 without its header", "empty file", "unknown format"],
)
def test_a_file_that_is_not_the_format_asked_for_is_refused(
    tmp_path: Path, content: str, fmt: str | None
) -> None:
    log = tmp_path / "log.csv"
    log.write_text(content)
    with pytest.raises(ValueError):
        replay(log, fmt)


def test_a_negative_reorder_window_is_refused() -> None:
    with pytest.raises(ValueError, match="reorder_rows"):
        replay(REES46, reorder_rows=-1)


def test_the_summary_line_reads_the_counts(rees46) -> None:
    run, _ = rees46
    assert run.stats.summary() == (
        "17,435 rows: 17,434 events (click 17,055, cart 165, purchase 214), 0 skipped, "
        "1 rejected (malformed_row 1); 6,493 catalog items"
    )


# ---------------------------------------------------------------- recordings


def simulated(events: int = 300) -> list[Event | CatalogItem]:
    from producers.simulator import Shop, ShopConfig

    return list(Shop(ShopConfig(events=events, delay_scale=1 / 60)).records())


def test_a_recording_reads_back_the_records_it_was_given(tmp_path: Path) -> None:
    records = simulated()
    path = tmp_path / "rec.jsonl"
    passed_on = list(recorded(records, path))
    assert passed_on == records  # unchanged, in order
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(records)
    assert lines[0] == encode_catalog_item(records[0])  # the wire JSON, byte for byte
    assert lines[-1] == encode_event(records[-1])
    assert list(read_recording(path, now_ms=NOW_MS)) == records
    run = replay(path, now_ms=NOW_MS)
    assert run.format == "recstream"
    assert list(run) == records  # file order, recorded ids, catalog items as recorded
    events = events_of(records)
    assert run.stats.events == len(events) and run.stats.rejected == 0
    assert (
        run.stats.catalog_items == len(records) - len(events) == run.stats.rows_by_type["catalog"]
    )
    assert run.stats.rows == run.stats.events + run.stats.catalog_items


def test_a_recording_is_replayed_in_file_order_not_by_time(tmp_path: Path) -> None:
    item = CatalogItem("i1", NOW_MS - 2_000)
    late = Event("e-1", NOW_MS - 2_000, "click", "u1", "i1")
    early = Event("e-2", NOW_MS - 3_000, "cart", "u1", "i1")  # sent after, stamped before
    path = tmp_path / "rec.jsonl"
    list(recorded([item, late, early], path))
    run = replay(path, now_ms=NOW_MS)
    assert list(run) == [item, late, early] and run.stats.rejected == 0


def test_a_closed_recording_holds_every_record_handed_on(tmp_path: Path) -> None:
    records = simulated()
    path = tmp_path / "rec.jsonl"
    stream = recorded(records, path)
    taken = [next(stream) for _ in range(25)]
    stream.close()
    assert list(read_recording(path, now_ms=NOW_MS)) == taken == records[:25]
    list(recorded(records[25:30], path, append=True))
    assert list(read_recording(path, now_ms=NOW_MS)) == records[:30]
    list(recorded(records[:3], path))  # a new recording starts empty
    assert list(read_recording(path, now_ms=NOW_MS)) == records[:3]


def test_defective_recorded_lines_are_each_rejected_with_their_reason(tmp_path: Path) -> None:
    good = [
        CatalogItem("i1", NOW_MS - 5_000, "toys"),
        Event("e-1", NOW_MS - 1_000, "click", "u", "i1"),
    ]
    lines = [
        encode_record(good[0]),  # 1: fine
        b"",  # 2: blank, not a row
        b'{"event_id":"e-2","ts":1732239999000,"user_id":"u","item_id":"i1"}',  # 3: no type
        b'{"event_id":"e-3","ts":1732239999000,"type":"like","user_id":"u","item_id":"i1"}',  # 4
        b'{"item_id":"i2","ts":1732239999000,"price":-1}',  # 5: bad_price
        b'{"item_id":"i3","ts":"soon"}',  # 6: wrong_type
        b"[1, 2]",  # 7: not_object
        b'{"event_id":"e-4","ts":9999999999999,"type":"click","user_id":"u","item_id":"i1"}',  # 8
        b"\xff\xfe",  # 9: not_utf8
        encode_record(good[1]),  # 10: fine
        b'{"event_id":"e-5","ts":17322',  # 11: cut off at the end, no final newline
    ]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\r\n".join(lines))
    run = replay(path, "recstream", now_ms=NOW_MS)
    assert list(run) == good
    assert run.stats.rejected_by_reason == {
        "missing_field": 1,
        "unknown_type": 1,
        "bad_price": 1,
        "wrong_type": 1,
        "not_object": 1,
        "bad_timestamp": 1,
        "not_utf8": 1,
        "not_json": 1,
    }
    assert run.stats.first_rejections["missing_field"] == "line 3: type is required"
    assert run.stats.first_rejections["not_json"].startswith("line 11: ")
    assert run.stats.rows == 10 == run.stats.events + run.stats.catalog_items + run.stats.rejected
    with pytest.raises(InvalidRecord, match="line 3: type is required"):
        list(read_recording(path, now_ms=NOW_MS))
    assert run.stats.summary().startswith("10 rows: 1 events (click 1), 0 skipped, 8 rejected")


def test_a_recording_is_guessed_from_its_first_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "stream.txt"
    path.write_bytes(b"\n  \n" + encode_record(CatalogItem("i1", NOW_MS)) + b"\n")
    assert guess_format(path) == "recstream"
    assert replay(path, now_ms=NOW_MS).format == "recstream"
    with pytest.raises(ValueError, match="file order"):
        replay(path, reorder_rows=10)


def test_produce_and_bench_accept_a_recording_as_source(tmp_path: Path) -> None:
    from streams.cli import build_parser, open_source

    path = tmp_path / "rec.jsonl"
    records = simulated(50)
    list(recorded(records, path))
    for command in (["produce"], ["bench", "quality"]):
        args = build_parser().parse_args([*command, "--source", str(path)])
        log, expected, source = open_source(args)
        assert expected is None and source is log and log.format == "recstream"
        assert list(log) == records
    args = build_parser().parse_args(["produce", "--source", str(path), "--format", "recstream"])
    assert args.format == "recstream"
