"""The running worker: bad input to the dead-letter topic, exact recovery, clean shutdown."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import Counter

import pytest
from kafka import KafkaProducer

from producers.client import EventPublisher
from producers.contract import CatalogItem, Event, ItemContent, encode_event
from tests.kafka_readers import read_all
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

NOW = int(time.time() * 1000)


def valid(n: int, user: str = "u1", item: str = "i1", kind: str = "click") -> bytes:
    return encode_event(
        Event(f"ok-{n}", NOW, kind, user, item, item=ItemContent("home.lamp", "acme", 20.0))
    )


def event_json(**changes) -> bytes:
    base = {"event_id": "x", "ts": NOW, "type": "click", "user_id": "u1", "item_id": "i1"}
    return json.dumps({**base, **changes}).encode()


MALFORMED = {
    "not_json": b"{this is not json",
    "not_utf8": bytes([0xFF, 0xFE, 0x00, 0x81]) * 8,
    "empty": b"",
    "missing_field": json.dumps(
        {"event_id": "m", "ts": NOW, "type": "click", "item_id": "i1"}
    ).encode(),
    "unknown_type": event_json(event_id="t", type="teleport"),
    "bad_price": event_json(event_id="p", item={"price": -5.0}),
    "oversized": event_json(event_id="big", session_id="x" * 1_000_000),
    "bad_timestamp": event_json(event_id="y3000", ts=32_503_680_000_000),
    "wrong_type": event_json(event_id="w", user_id=12345),
    "unknown_schema": event_json(event_id="v3", schema=3),
    "duplicate": valid(0),
}


@pytest.fixture
def worker(tmp_path, cli_env):
    process = WorkerProcess(worker_env(cli_env), tmp_path / "checkpoints")
    yield process
    process.stop()


def test_every_kind_of_malformed_message_lands_in_the_dlq_with_its_reason(worker, broker, topics):
    """Also acceptance 3 of issue 16: a record of an unknown schema version (an event and a
    catalog record) is dead-lettered as ``unknown_schema``; one of the previous version
    (no ``schema`` field) is applied."""
    worker.start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4_000_000)
    producer.send(topics.events, key=b"u1", value=valid(0))
    for value in MALFORMED.values():
        producer.send(topics.events, key=b"u1", value=value)
    producer.send(
        topics.events, key=b"u1", value=event_json(event_id="nan", item={"price": math.nan})
    )
    producer.send(topics.events, key=b"u1", value=valid(1))  # the worker keeps going
    producer.send(topics.events, key=b"u1", value=event_json(event_id="version-1"))
    future = json.dumps({"schema": 3, "item_id": "i2", "ts": NOW}).encode()
    producer.send(topics.items, key=b"i2", value=future)
    producer.flush()

    expected = Counter(dict.fromkeys(MALFORMED, 1)) + Counter(["bad_price", "unknown_schema"])
    letters = read_all(broker.bootstrap, topics.dlq, expected=sum(expected.values()), timeout_s=90)
    reasons = Counter(json.loads(value)["reason"] for _, value in letters)
    assert reasons == expected
    from_items = []
    for _, value in letters:
        letter = json.loads(value)
        assert letter["topic"] in (topics.events, topics.items) and letter["offset"] >= 0
        assert letter["error"].startswith(letter["reason"] + ":")
        if letter["topic"] == topics.items:
            from_items.append((letter["reason"], json.loads(letter["raw"])["item_id"]))
    assert from_items == [("unknown_schema", "i2")]

    metrics = worker.wait_for(
        lambda m: m.get("recstream_events_total{type=click}") == 3,
        60,
        "the three valid events applied, one of them of schema version 1",
    )
    for reason, count in expected.items():
        assert metrics[f"recstream_invalid_events_total{{reason={reason}}}"] == count
    assert worker.process.poll() is None


def _publish_and_apply(worker, broker, topics, records: list[Event | CatalogItem]) -> int:
    """Publish ``records`` and wait until the worker applied every event; return how many."""
    count = sum(isinstance(r, Event) for r in records)
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish(records)
    worker.wait_for(
        lambda m: sum(v for k, v in m.items() if k.startswith("recstream_events_total{")) >= count,
        120,
        "all applied",
    )
    return count


def _sim_events(n: int, seed: int = 3) -> list[Event | CatalogItem]:
    from producers.simulator import Shop, ShopConfig

    return list(
        Shop(
            ShopConfig(seed=seed, events=n, users=500, initial_items=300, new_items=50, drifts=())
        ).records()
    )


def test_sigkill_at_three_points_still_applies_every_event_exactly_once(worker, broker, topics):
    records = _sim_events(12_000)
    events = [r for r in records if isinstance(r, Event)]
    produced = Counter(e.type for e in events)

    def applied(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items() if k.startswith("recstream_events_total{"))

    worker.start()
    with EventPublisher(broker.bootstrap, topics.events, topics.items, rate=500) as publisher:
        sending = threading.Thread(target=publisher.publish, args=(records,), daemon=True)
        sending.start()  # the stream keeps flowing through the kills and restarts
        for fraction in (0.2, 0.5, 0.8):
            # a checkpoint of this run first (the restart must resume from it), then the
            # kill, at a different distance from that checkpoint each time
            worker.wait_for(
                lambda m, f=fraction: (
                    applied(m) >= f * len(events) and m.get("recstream_checkpoints_total", 0) >= 1
                ),
                120,
                f"{fraction:.0%} applied and a checkpoint written",
            )
            time.sleep(0.2 + fraction)
            worker.signal(signal.SIGKILL)
            worker.start()
        sending.join(timeout=120)
    metrics = worker.wait_for(lambda m: applied(m) >= len(events), 180, "every event applied")
    time.sleep(2.0)  # nothing more arrives: a double application would show now
    metrics = worker.metrics()
    assert {kind: metrics[f"recstream_events_total{{type={kind}}}"] for kind in produced} == dict(
        produced
    )
    assert metrics["recstream_scores_published_total"] > 0  # scores keep flowing after restart
    assert worker.tail(10**7).count("restored checkpoint-") == 3  # resumed, not replayed whole


def test_a_quiet_worker_saves_all_it_applied_and_sigterm_exits_cleanly_with_a_checkpoint(
    worker, broker, topics
):
    worker.start()
    count = _publish_and_apply(worker, broker, topics, _sim_events(3_000, seed=5))
    # no batch comes after the last one: the checkpoint it owes is written all the same
    worker.wait_for_checkpoint(count)
    before = set(worker.checkpoint_dir.glob("checkpoint-*.pt"))
    assert worker.signal(signal.SIGTERM) == 0
    after = set(worker.checkpoint_dir.glob("checkpoint-*.pt"))
    assert after - before, "no checkpoint written on shutdown"

    worker.start()
    metrics = worker.metrics()
    assert sum(v for k, v in metrics.items() if k.startswith("recstream_events_total{")) == count
    assert "restored checkpoint-" in worker.tail()
    assert "\x1b" not in worker.tail(10**7), "terminal escape codes in the log file"


def test_a_shutdown_checkpoint_that_fails_is_an_error_exit_not_a_silent_one(
    tmp_path, cli_env, broker, topics
):
    """The only checkpoint is the shutdown one, and the disk is full: exit 74, said in the log."""
    worker = WorkerProcess(
        {**worker_env(cli_env), "RECSTREAM_FAULTS": "disk_full_checkpoint@1"},
        tmp_path / "checkpoints",
        checkpoint_interval_s=3600,
    )
    worker.start()
    _publish_and_apply(worker, broker, topics, _sim_events(500, seed=3))
    worker.signal(signal.SIGTERM)
    assert worker.process.returncode == 74, worker.tail()
    assert "the shutdown checkpoint failed" in worker.tail(10**6)
    assert not list(worker.checkpoint_dir.glob("checkpoint-*.pt"))
