"""Nothing lost: a batch that raises stops the worker; restored dead letters go out at once."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
from kafka import KafkaProducer

from producers.client import EventPublisher
from producers.contract import Event, ItemContent
from streams.bench.fault_kit import read_topic
from streams.broker import EmbeddedBroker, free_port
from streams.ledger import ApplyLedger
from streams.service import WorkerService
from streams.settings import Settings, TopicNames
from streams.sync import replay
from streams.topics import ensure_topics
from tests.kafka_readers import read_all
from tests.test_worker import MALFORMED, _sim_events
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

POISON = (0, 60)  # partition, offset of the message whose batch raises once


def _applied(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("recstream_events_total{"))


def _applied_by_type(metrics: dict[str, float]) -> Counter[str]:
    prefix = "recstream_events_total{type="
    return Counter(
        {k[len(prefix) : -1]: int(v) for k, v in metrics.items() if k.startswith(prefix) and v}
    )


def test_a_poison_batch_stops_the_worker_and_the_restart_applies_everything_once(
    tmp_path, broker, topics, cli_env
):
    env = {**worker_env(cli_env), "RECSTREAM_FAULTS": f"poison_batch@{POISON[0]}:{POISON[1]}"}
    worker = WorkerProcess(env, tmp_path / "checkpoints")
    records = _sim_events(2_000, seed=11)
    events = [r for r in records if isinstance(r, Event)]
    try:
        worker.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        bad = [
            producer.send(topics.events, key=b"u-bad", value=value).get(timeout=30)
            for value in (MALFORMED["not_json"], MALFORMED["unknown_type"])
        ]
        producer.close()
        with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
            publisher.publish(records)

        assert worker.process.wait(timeout=120) == 70
        assert "exiting without a checkpoint" in worker.tail(10**6)

        worker.start()  # the fault fired once; this run is clean
        worker.wait_for(lambda m: _applied(m) >= len(events), 120, "every event applied")
        time.sleep(2.0)  # a double application would show now
        metrics = worker.metrics()
    finally:
        worker.stop()
    assert _applied_by_type(metrics) == Counter(e.type for e in events)
    letters = read_all(broker.bootstrap, topics.dlq, expected=len(bad), timeout_s=60)
    received = {(json.loads(v)["partition"], json.loads(v)["offset"]) for _, v in letters}
    assert received == {(meta.partition, meta.offset) for meta in bad}


def test_dead_letters_restored_from_a_checkpoint_are_sent_without_waiting_for_a_shutdown(
    tmp_path, broker, topics, cli_env
):
    checkpoints = tmp_path / "checkpoints"
    service = WorkerService(Settings(topic_prefix=topics.prefix, checkpoint_dir=checkpoints))
    letter = (b"u9", json.dumps({"reason": "not_json", "partition": 3, "offset": 7}).encode())
    service.dead_letters.add([letter])  # handed to a producer, never acknowledged
    service.checkpoint(background=False)
    worker = WorkerProcess(worker_env(cli_env), checkpoints)
    try:
        worker.start()
        letters = read_all(broker.bootstrap, topics.dlq, expected=1, idle_s=60, timeout_s=60)
        assert worker.process.poll() is None  # sent by a running worker, not at its exit
    finally:
        worker.stop()
    assert letters == [letter]


def test_a_checkpoint_whose_state_does_not_load_is_refused_for_the_next_older(tmp_path, caplog):
    settings = Settings(checkpoint_dir=tmp_path)
    good = WorkerService(settings)
    good.pipeline.offsets = {0: 5, 1: 7}
    good.checkpoint(background=False)
    good.store.save({"pipeline": {"learner": {"bogus": 1}}, "outbox": []}, {0: 99, 1: 99})

    restored = WorkerService(settings)
    assert restored.restored_from == next(tmp_path.glob("*000000001.pt")).name
    assert restored.pipeline.offsets == {0: 5, 1: 7}  # never the refused one's 99s
    assert "its state does not load" in caplog.text


def test_falling_back_to_an_older_checkpoint_still_applies_every_event_once(
    tmp_path, broker, topics, cli_env
):
    records = _sim_events(2_400, seed=13)
    events = [r for r in records if isinstance(r, Event)]
    first, rest = records[: len(records) // 2], records[len(records) // 2 :]

    env = {**worker_env(cli_env), "RECSTREAM_LEDGER": "1"}
    worker = WorkerProcess(env, tmp_path / "checkpoints", checkpoint_interval_s=1)
    try:
        worker.start()
        with EventPublisher(broker.bootstrap, topics.events, topics.items, rate=800) as publisher:
            publisher.publish(first)
            worker.wait_for(
                lambda m: m.get("recstream_checkpoints_total", 0) >= 1, 60, "a first checkpoint"
            )
            time.sleep(1.0)  # idle: no batch, no further checkpoint
            older = {path: path.read_bytes() for path in worker.checkpoint_dir.glob("*.pt")}
            publisher.publish(rest)  # over 1.5 s: checkpoints of the second half, committed
        worker.wait_for(lambda m: _applied(m) >= len(events), 120, "everything applied")
        worker.wait_for_checkpoint(len(events))  # the second half's, however slow the writer
        worker.signal(signal.SIGKILL)
        newer = set(worker.checkpoint_dir.glob("*.pt")) - set(older)
        assert older and newer
        for path in newer:
            path.write_bytes(b"corrupt")
        for path, saved in older.items():  # pruned or not: only the first half's remain usable
            path.write_bytes(saved)

        # from its offsets, and its previous run's updates on sync: in the model once, either way
        worker.start()
        worker.wait_for(lambda m: _applied(m) >= len(events), 120, "everything in the model")
        time.sleep(2.0)  # a double application would show now
        metrics = worker.metrics()
        assert worker.signal(signal.SIGTERM) == 0  # with a last update
    finally:
        worker.stop()
    log = worker.tail(10**6)
    assert "refused checkpoint" in log and f"restored {max(older).name}:" in log
    assert _applied_by_type(metrics) == Counter(e.type for e in events)
    # its last update handed every partition over: offsets and ledgers as the model holds them
    state, _ = replay(m.value for m in read_topic(broker.bootstrap, topics.sync))
    ends = {p: record["offset"] for p, record in state.partitions.items()}
    assert sum(ends.values()) == len(events)
    for partition, end in ends.items():
        ledger = ApplyLedger()
        ledger.load(partition, state.partitions[partition]["ledger"])
        counts = ledger.counts(partition)
        assert set(counts.values()) == {1}, f"partition {partition}: an event applied twice"
        assert sorted(counts) == list(range(end)), f"partition {partition}: an event lost"


def test_a_restart_reads_the_catalog_on_from_its_checkpoint_not_again_from_the_start(
    tmp_path, broker, topics, cli_env
):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    good = json.dumps({"item_id": "i1", "ts": int(time.time() * 1000), "category": "a.b"})
    for value in (good.encode(), b"{not json"):
        producer.send(topics.items, key=b"i1", value=value).get(timeout=30)
    worker = WorkerProcess(worker_env(cli_env), tmp_path / "checkpoints")
    try:
        worker.start()
        worker.wait_for(lambda m: m.get("recstream_catalog_items", 0) >= 1, 60, "the catalog read")
        worker.wait_for(
            lambda m: m.get("recstream_invalid_events_total{reason=not_json}", 0) == 1,
            60,
            "the bad record dead-lettered",
        )
        assert worker.signal(signal.SIGTERM) == 0
        worker.start()
        producer.send(topics.items, key=b"i2", value=b"[]").get(timeout=30)  # a second bad one
        metrics = worker.wait_for(
            lambda m: m.get("recstream_invalid_events_total{reason=not_object}", 0) == 1,
            60,
            "the new bad record dead-lettered",
        )
        # counted when applied, on the topic when the broker acknowledged: read before the kill
        letters = read_all(broker.bootstrap, topics.dlq, expected=2, timeout_s=30)
    finally:
        worker.stop()
        producer.close()
    assert metrics["recstream_invalid_events_total{reason=not_json}"] == 1  # not counted again
    assert sorted(json.loads(v)["reason"] for _, v in letters) == ["not_json", "not_object"]


def _clicks(prefix: str, n: int) -> list[Event]:
    now = int(time.time() * 1000)
    content = ItemContent("home.lamp", "acme", 20.0)
    return [Event(f"{prefix}-{i}", now, "click", f"u{i % 3}", "i1", item=content) for i in range(n)]


def test_a_broker_restarted_empty_is_noticed_and_nothing_produced_after_it_is_lost(
    tmp_path, cli_env
):
    port = free_port()
    clicks = lambda m: m.get("recstream_events_total{type=click}", 0)  # noqa: E731
    with EmbeddedBroker(port=port) as first:
        names = TopicNames("reset.")
        ensure_topics(first.bootstrap, names, partitions=4)
        env = {**worker_env(cli_env), "RECSTREAM_BROKER": first.bootstrap}
        env["RECSTREAM_TOPIC_PREFIX"] = names.prefix
        worker = WorkerProcess(env, tmp_path / "checkpoints")
        try:
            worker.start()
            with EventPublisher(first.bootstrap, names.events, names.items) as publisher:
                publisher.publish(_clicks("before", 40))
            worker.wait_for(lambda m: clicks(m) == 40, 60, "the first 40 clicks applied")
            assert worker.signal(signal.SIGTERM) == 0  # a checkpoint at offsets ~10 each
        finally:
            worker.stop()
    with EmbeddedBroker(port=port) as second:  # memory storage: every topic empty again
        ensure_topics(second.bootstrap, names, partitions=4)
        with EventPublisher(second.bootstrap, names.events, names.items) as publisher:
            publisher.publish(_clicks("after", 8))  # fewer than the checkpoint's offsets
        try:
            worker.start()
            metrics = worker.wait_for(lambda m: clicks(m) >= 48, 60, "the new clicks applied")
        finally:
            worker.stop()
    assert clicks(metrics) == 48
    assert metrics["recstream_offset_resets_total{topic=events}"] >= 1
    assert "reading it again from its start" in worker.tail(10**6)


def test_every_counter_continues_from_the_restored_checkpoint(tmp_path):
    settings = Settings(checkpoint_dir=tmp_path)
    first = WorkerService(settings)
    first.metrics.scores_published.inc(17)
    first.metrics.samples_learned.labels(task="cart").inc(5)
    first.metrics.drift_detections.labels(task="click", detector="adwin").inc()
    first.checkpoint(background=False)
    first.metrics.scores_published.inc(100)  # after the checkpoint: replayed, not carried

    value = WorkerService(settings).metrics.registry.get_sample_value
    assert value("recstream_scores_published_total") == 17
    assert value("recstream_samples_learned_total", {"task": "cart"}) == 5
    assert value("recstream_drift_detections_total", {"task": "click", "detector": "adwin"}) == 1
