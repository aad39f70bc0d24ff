"""Several ``recstream worker`` processes, one consumer group, one model: on the real broker.

The model's own state is read back from the ``sync`` topic (every update,
in order: :func:`streams.sync.replay`): per partition, the next offset
applied, the events applied and the ledger of applied offsets, as the
group's last update of that partition recorded them.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from streams.bench.fault_kit import Feeder, WorkerProcess, fault_records, read_topic, settle
from streams.ledger import ApplyLedger
from streams.sync import replay

CLEAN = {"malformed_every": 10**9, "duplicate_every": 10**9}


def _partitions_of(updates, worker: str) -> set[int]:
    return {p for u in updates if u.worker == worker for p in u.partitions}


def _owned(worker: WorkerProcess) -> float:
    return worker.metrics().get("recstream_assigned_partitions", 0)


@pytest.mark.slow
def test_a_sigkilled_workers_partitions_move_and_every_event_is_in_the_model_once(
    tmp_path, broker, topics
):
    records = list(fault_records(14_000, seed=5, **CLEAN))
    events = sum(r.kind == "event" for r in records)
    first = WorkerProcess(broker.bootstrap, topics, tmp_path / "a").start()
    second = WorkerProcess(broker.bootstrap, topics, tmp_path / "b").start()
    try:
        first.wait_for(lambda m: m.get("recstream_assigned_partitions") == 2, 60, "a split")
        feeder = Feeder(broker.bootstrap, topics, records, rate=1_000).start()
        second.wait_for(
            lambda m: (
                m.get("recstream_sync_deltas_sent_total", 0) >= 2
                and m.get("recstream_sync_deltas_applied_total", 0) >= 1
            ),
            60,
            "updates both ways",
        )
        peer = first.metrics()
        assert peer["recstream_sync_deltas_applied_total"] >= 1  # each learns from the other
        second.kill()
        killed_ms = time.time() * 1000
        first.wait_for(lambda m: m.get("recstream_assigned_partitions") == 4, 60, "takeover")
        feeder.wait()
        settle(first, at_least=0)
        first.signal(signal.SIGTERM)  # its last update hands every partition over
    finally:
        first.stop()
        second.stop()

    state, updates = replay(m.value for m in read_topic(broker.bootstrap, topics.sync))
    assert feeder.failed == 0
    assert {p: state.partitions[p]["offset"] for p in range(4)} == {
        p: feeder.end(p) for p in range(4)
    }
    assert sum(state.partitions[p]["applied"] for p in range(4)) == events
    for partition in range(4):
        ledger = ApplyLedger()
        ledger.load(partition, state.partitions[partition]["ledger"])
        counts = ledger.counts(partition)
        assert set(counts.values()) == {1}, f"partition {partition} applied twice"
        assert sorted(counts) == list(range(feeder.end(partition)))

    workers = {u.worker for u in updates}
    assert len(workers) == 2
    dead = next(w for w in workers if _partitions_of(updates, w) != set(range(4)))
    moved = _partitions_of(updates, dead)
    assert moved
    scores = [json.loads(m.value) for m in read_topic(broker.bootstrap, topics.scores) if m.value]
    after = Counter(s["user_id"] for s in scores if s["ts"] > killed_ms + 1_000)
    moved_users = {
        json.loads(m.value)["user_id"]
        for m in read_topic(broker.bootstrap, topics.events)
        if m.partition in moved
    }
    assert set(after) & moved_users  # the dead worker's users are still served
    seqs: dict[str, int] = {}
    for record in scores:
        assert record["seq"] >= 0
        seqs[record["user_id"]] = record["seq"]


@pytest.mark.slow
def test_a_worker_that_joins_starts_from_the_groups_model(tmp_path, broker, topics):
    records = list(fault_records(8_000, seed=9, **CLEAN))
    first = WorkerProcess(
        broker.bootstrap, topics, tmp_path / "a", "--checkpoint-interval", "2"
    ).start()
    joiner = WorkerProcess(broker.bootstrap, topics, tmp_path / "c")
    try:
        feeder = Feeder(broker.bootstrap, topics, records, rate=1_000).start()
        first.wait_for(
            lambda m: (
                m.get("recstream_model_snapshots_published_total", 0) >= 1
                and m.get("recstream_model_version", 0) > 20
            ),
            90,
            "a snapshot of a model that learned",
        )
        version = first.metrics()["recstream_model_version"]
        joiner.start()
        joined = joiner.wait_for(lambda m: _owned(joiner) > 0, 60, "partitions")
        assert joined["recstream_model_version"] >= version
        feeder.wait()
    finally:
        first.stop()
        joiner.stop()
