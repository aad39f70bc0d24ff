"""Producing to Kafka: what the producer counts is exactly what a foreign client reads back."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections import Counter

import pytest

from producers.client import encoded_chunks
from producers.contract import (
    SCHEMA_VERSION,
    CatalogItem,
    CatalogRemoval,
    decode_catalog_item,
    decode_event,
)
from tests.conftest import DATA, RECSTREAM
from tests.kafka_readers import read_all

RATE = re.compile(r"sent ([\d,]+) events \((\d+) failed.* ([\d,]+) events/s")


def produce(cli_env, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [RECSTREAM, "produce", *args], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_simulated_events_are_read_back_by_librdkafka_exactly_and_all_valid(
    broker, topics, cli_env
):
    result = produce(cli_env, "--source", "sim", "--events", "100000", "--rate", "0")
    sent, failed, rate = RATE.search(result.stdout).groups()
    assert int(sent.replace(",", "")) == 100_000 and failed == "0"
    assert int(rate.replace(",", "")) > 0  # the rate is printed; its size is a benchmark matter

    events = read_all(broker.bootstrap, topics.events, expected=100_000)
    assert len(events) == 100_000
    decoded = [decode_event(value) for _, value in events]
    assert all(
        key.decode() == event.user_id for (key, _), event in zip(events, decoded, strict=True)
    )
    assert len({event.event_id for event in decoded}) == 100_000
    kinds = Counter(event.type for event in decoded)
    assert kinds["click"] > 0 and kinds["cart"] > 0 and kinds["purchase"] > 0

    assert {json.loads(value)["schema"] for _, value in events} == {SCHEMA_VERSION}
    on_items = read_all(broker.bootstrap, topics.items)
    assert {json.loads(value)["schema"] for _, value in on_items} == {SCHEMA_VERSION}
    items = [decode_catalog_item(value) for _, value in on_items]
    assert len(items) >= 5_000
    known = {item.item_id for item in items}
    assert {event.item_id for event in decoded} <= known


def _rows_by_type(path, column, has_header):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows = rows[1:] if has_header else rows
    return Counter(row[column] for row in rows if len(row) == (9 if has_header else 5))


@pytest.mark.parametrize(
    ("name", "fmt", "column", "header", "mapping"),
    [
        (
            "rees46-2019-oct-head.csv",
            "rees46",
            1,
            True,
            {"view": "click", "cart": "cart", "purchase": "purchase"},
        ),
        (
            "taobao-userbehavior-sample.csv",
            "taobao",
            3,
            False,
            {"pv": "click", "cart": "cart", "buy": "purchase"},
        ),
    ],
)
def test_a_replayed_log_puts_every_funnel_row_on_events_in_event_time_order(
    broker, topics, cli_env, name, fmt, column, header, mapping
):
    path = DATA / name
    result = produce(cli_env, "--source", str(path), "--format", fmt)
    expected = Counter(
        {
            mapping[kind]: n
            for kind, n in _rows_by_type(path, column, header).items()
            if kind in mapping
        }
    )
    events = [
        decode_event(value, now_ms=None)
        for _, value in read_all(broker.bootstrap, topics.events, expected=sum(expected.values()))
    ]
    assert Counter(event.type for event in events) == expected
    by_user: dict[str, list[int]] = {}
    for event in events:  # order holds per partition, so per user
        by_user.setdefault(event.user_id, []).append(event.ts)
    assert all(ts == sorted(ts) for ts in by_user.values())
    expected_rows = {"rees46": "1 rejected (malformed_row 1)", "taobao": "(fav 128)"}[fmt]
    assert expected_rows in result.stderr


def test_a_producer_refuses_an_invalid_event_and_counts_it(broker, topics):
    from producers.client import EventPublisher
    from producers.contract import Event

    good = Event("e-1", 1_732_240_000_000, "click", "u1", "i1")
    bad = Event("e-2", 1_732_240_000_000, "teleport", "u1", "i1")
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        report = publisher.publish([good, bad])
    assert report.events_sent == 1 and report.refused == {"unknown_type": 1}
    values = [json.loads(v) for _, v in read_all(broker.bootstrap, topics.events, expected=1)]
    assert [v["event_id"] for v in values] == ["e-1"]


def test_a_catalog_removal_goes_out_as_a_tombstone_keyed_by_its_item_in_order():
    records = [CatalogItem("i9", 1_732_240_000_000), CatalogRemoval("i9")]
    (chunk,) = encoded_chunks(records)
    assert [(key, value is None) for key, value in chunk.items] == [(b"i9", False), (b"i9", True)]
