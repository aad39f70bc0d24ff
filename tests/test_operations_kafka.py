"""An operator's day against the real broker: erasure, freeze and rollback through `control`."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from producers.client import EventPublisher
from producers.contract import Event
from streams.checkpoint import CheckpointStore
from streams.ledger import ApplyLedger
from tests.conftest import RECSTREAM
from tests.kafka_readers import read_all
from tests.test_operations import sim_events, strings
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

FAST_WINDOWS = ("--click-window", "2", "--click-wait", "0.125", "--conversion-window", "8")


def recstream(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([RECSTREAM, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def publish(broker, topics, events: list[Event], rate: float = 0.0) -> None:
    with EventPublisher(broker.bootstrap, topics.events, topics.items, rate=rate) as publisher:
        report = publisher.publish(events)
    assert report.events_failed == 0


def applied(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("recstream_events_total{"))


def control_applied(command: str) -> str:
    return f"recstream_control_commands_total{{command={command},result=applied}}"


def newest_state(directory: Path, owner: str) -> dict:
    found, refused = CheckpointStore(directory, owner=owner).load_latest()
    assert found is not None, refused
    return found.state


def test_an_erased_user_is_gone_from_the_next_checkpoint_and_scores_even_after_a_sigkill(
    tmp_path, broker, topics, cli_env
):
    env = worker_env(cli_env)
    events = sim_events(1_600)
    first, second = events[:800], events[800:]
    clicks = Counter(e.user_id for e in second if e.type == "click")
    user = next(u for u, _ in clicks.most_common() if any(e.user_id == u for e in first))
    theirs_later = sum(e.user_id == user for e in second)
    worker = WorkerProcess(env, tmp_path / "checkpoints", checkpoint_interval_s=3600)
    try:
        worker.start()
        publish(broker, topics, first)
        worker.wait_for(lambda m: applied(m) >= len(first), 60, "the first half applied")
        recstream(env, "erase", "nobody")  # unknown: harmless, and a checkpoint at once
        worker.wait_for(
            lambda m: m.get("recstream_checkpoints_total", 0) >= 1, 60, "a first checkpoint"
        )
        before_erasure = set(worker.checkpoint_dir.glob("checkpoint-*.pt"))
        publish(broker, topics, second)
        worker.wait_for(lambda m: applied(m) >= len(events), 60, "the second half applied")
        assert user in set(strings(newest_state(worker.checkpoint_dir, topics.events)))

        recstream(env, "erase", user)
        worker.wait_for(
            lambda m: (
                m.get(control_applied("erase_user")) == 2
                and m.get("recstream_checkpoints_total", 0) >= 2
            ),
            60,
            "the erasure applied and a checkpoint written",
        )
        assert user not in set(strings(newest_state(worker.checkpoint_dir, topics.events)))
        scores = [v for k, v in read_all(broker.bootstrap, topics.scores) if k == user.encode()]
        assert scores and scores[0] is not None and scores[-1] is None  # then the tombstone

        # SIGKILL right after the erasure, and the checkpoint written since lost with it:
        # the restart restores the one from before, which still holds the user, and replays
        # the model updates sent after it (streams.sync); the erasure is applied again
        worker.signal(signal.SIGKILL)
        for path in set(worker.checkpoint_dir.glob("checkpoint-*.pt")) - before_erasure:
            path.unlink()
        assert user in set(strings(newest_state(worker.checkpoint_dir, topics.events)))
        worker.start()
        erased = "recstream_erased_events_total"
        metrics = worker.wait_for(
            lambda m: (
                applied(m) + m.get(erased, 0) >= len(events)
                and m.get(control_applied("erase_user")) >= 2
            ),
            60,
            "the stream read again and the erasure applied again",
        )
        worker.signal(signal.SIGTERM)
    finally:
        worker.stop()
    # nothing applied twice: their events, if read again, were skipped
    assert metrics[erased] in (0, theirs_later)
    assert applied(metrics) + metrics[erased] == len(events)
    assert user not in set(strings(newest_state(worker.checkpoint_dir, topics.events)))


def test_rollback_serves_the_chosen_version_and_frozen_nothing_is_learned_or_applied_twice(
    tmp_path, broker, topics, cli_env
):
    env = {**worker_env(cli_env), "RECSTREAM_LEDGER": "1"}
    events = sim_events(4_000)
    first, second, third = events[:1_500], events[1_500:3_000], events[3_000:]
    worker = WorkerProcess(
        env,
        tmp_path / "checkpoints",
        "--keep-checkpoints",
        "50",
        *FAST_WINDOWS,
        checkpoint_interval_s=3600,
    )
    directory = str(worker.checkpoint_dir)
    try:
        worker.start()
        # Labels are held until event time passes the first click wait after the first
        # batch: a first fetch that brought one partition's part whole would put that past
        # every event of the others. In two halves, the second carries event time past it.
        half = len(first) // 2
        publish(broker, topics, first[:half])
        worker.wait_for(lambda m: applied(m) >= half, 60, "the first half applied")
        publish(broker, topics, first[half:])
        worker.wait_for(
            lambda m: applied(m) >= len(first) and m.get("recstream_model_version", 0) > 0,
            60,
            "the first part applied and learned from",
        )
        worker.signal(signal.SIGTERM)  # a checkpoint: the model to go back to
        worker.start()
        publish(broker, topics, second)
        metrics = worker.wait_for(
            lambda m: applied(m) >= len(first) + len(second), 60, "the second part applied"
        )
        listed = recstream(env, "model", "list", "--json", "--checkpoint-dir", directory)
        versions = [json.loads(line)["model_version"] for line in listed.splitlines()]
        assert len(versions) == 1 and 0 < versions[0] < metrics["recstream_model_version"]
        target = versions[0]

        recstream(env, "model", "freeze")
        worker.wait_for(lambda m: m.get("recstream_model_frozen") == 1, 30, "frozen")
        recstream(env, "model", "rollback", str(target), "--checkpoint-dir", directory)
        metrics = worker.wait_for(
            lambda m: m.get(control_applied("rollback")) == 1, 30, "the rollback applied"
        )
        assert metrics["recstream_model_version"] == target
        updates = metrics["recstream_model_updates_total"]
        published = metrics["recstream_scores_published_total"]

        publish(broker, topics, third)
        metrics = worker.wait_for(lambda m: applied(m) >= len(events), 60, "everything applied")
        worker.signal(signal.SIGTERM)
    finally:
        worker.stop()
    assert metrics["recstream_model_updates_total"] == updates  # frozen: flat
    assert metrics["recstream_scores_published_total"] > published  # scores keep flowing
    assert metrics["recstream_model_version"] == target
    types = {
        k: metrics[f"recstream_events_total{{type={k}}}"] for k in Counter(e.type for e in events)
    }
    assert types == Counter(e.type for e in events)

    last_before = max(e.ts for e in first + second)
    records = [json.loads(v) for _, v in read_all(broker.bootstrap, topics.scores) if v]
    after = [r for r in records if r["event_ts"] > last_before]
    assert after and {r["model_version"] for r in after} == {target}

    state = newest_state(worker.checkpoint_dir, topics.events)
    ledger = ApplyLedger.from_state(state["ledger"])
    counts = Counter()
    for partition in ledger.partitions():
        counts.update(ledger.counts(partition).values())
    assert counts == {1: len(events)}  # every message applied once, none twice
