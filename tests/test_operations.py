"""An operator's day, without a broker: erase a user, freeze learning, list and roll back models."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from producers.contract import Event, encode_event
from producers.simulator import Shop, ShopConfig
from streams.checkpoint import CheckpointStore
from streams.cli import main
from streams.control import Command, encode_command
from streams.model_ops import list_models
from streams.pipeline import RawMessage
from streams.service import WorkerService
from streams.settings import Settings

FAST_WINDOWS = dict(click_window_s=2.0, click_wait_s=0.125, conversion_window_s=8.0)


def sim_events(n: int, seed: int = 3) -> list[Event]:
    config = ShopConfig(seed=seed, events=n, users=200, initial_items=100, new_items=10, drifts=())
    return [r for r in Shop(config).records() if isinstance(r, Event)]


class Stream:
    """Events as messages of one partition, stamped with record times 1, 2, 3, ..."""

    def __init__(self, events: list[Event]) -> None:
        self.messages = [
            RawMessage(0, n, e.user_id.encode(), encode_event(e), timestamp=n + 1)
            for n, e in enumerate(events)
        ]

    def batches(self, start: int, stop: int, size: int = 200) -> Iterator[list[RawMessage]]:
        for at in range(start, stop, size):
            yield self.messages[at : min(at + size, stop)]


def control(service: WorkerService, *commands: Command, timestamp: int) -> Any:
    start = service.next_control_offset(0)
    messages = [
        RawMessage(0, start + n, c.key, encode_command(c), timestamp)
        for n, c in enumerate(commands)
    ]
    return service.control_batch(messages)


def strings(value: Any) -> Iterator[str]:
    """Every string anywhere in a nested state (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "OU":
        for item in value.tolist():
            yield from strings(item)


@pytest.fixture
def service(tmp_path) -> WorkerService:
    return WorkerService(Settings(checkpoint_dir=tmp_path, keep_checkpoints=10, **FAST_WINDOWS))


def pending_of(pipeline: Any, user: str) -> list[int]:
    """Keys of the user's samples whose labels the pipeline still waits for or holds back."""
    stage = pipeline.labels
    waiting = [s for s in stage.waits._sample.tolist() if s is not None]
    return [
        s.key
        for s in [*stage.held.samples, *waiting, *(e.sample for e in stage.resolver._open.values())]
        if s.user_id == user
    ]


def busiest_user(events: list[Event]) -> str:
    users = [e.user_id for e in events if e.type != "impression"]
    return max(set(users), key=users.count)


def test_an_erased_user_is_in_no_part_of_the_state_and_not_in_the_next_checkpoint(service):
    events = sim_events(3_000)
    stream = Stream(events)
    for batch in stream.batches(0, len(events)):
        service.events_batch(batch)
    user = busiest_user(events)
    pipeline, learner = service.pipeline, service.pipeline.learner
    row = learner.encoder.tables["user"].row(user)
    assert row and learner.encoder.history.entries[row].any()
    assert any(s == user for s in strings(pipeline.state_dict()))
    assert (learner.encoder.user_snapshots.columns["users"] == row).any()
    assert pending_of(pipeline, user)

    out = control(service, Command("erase_user", user_id=user), timestamp=len(events) + 1)

    assert out.tombstones == [user.encode()]
    assert user not in set(learner.users())
    assert not learner.encoder.history.entries[row].any()
    assert not learner.encoder.stats["user"].values[row].any()
    table, offset, _ = learner.net.sections["user"]
    assert not learner.net.get_submodule(table).weight[offset + row].any()
    assert not pending_of(pipeline, user)
    for snapshots in (learner.encoder.snapshots, learner.encoder.user_snapshots):
        assert not ((snapshots.keys >= 0) & (snapshots.columns["users"] == row)).any()
    service.checkpoint(background=False)
    found, _ = service.store.load_latest()
    assert user not in set(strings(found.state))
    assert found.state["pipeline"]["erasures"] and found.state["control_offsets"] == {0: 1}


def test_events_sent_before_an_erasure_are_not_applied_again_later_ones_are(service):
    events = sim_events(2_000)
    stream = Stream(events)
    user = busiest_user(events)
    half = len(events) // 2
    for batch in stream.batches(0, half):
        service.events_batch(batch)
    control(service, Command("erase_user", user_id=user), timestamp=half)  # after record `half`
    skipped = 0
    for batch in stream.batches(half, len(events)):
        skipped += service.pipeline.process_events(batch).erased
    assert skipped == 0  # stamped after the request: they came back
    assert any(m.key == user.encode() for m in stream.messages[half:])
    assert user in set(service.pipeline.learner.users())

    again = WorkerService(service.settings)  # a replay of the whole stream, erasure first
    control(again, Command("erase_user", user_id=user), timestamp=half)
    replayed = sum(again.pipeline.process_events(b).erased for b in stream.batches(0, half))
    assert replayed == sum(m.key == user.encode() for m in stream.messages[:half])
    assert user not in set(again.pipeline.learner.users())


def test_frozen_the_model_does_not_change_while_scores_and_labels_go_on(service):
    events = sim_events(3_000)
    stream = Stream(events)
    for batch in stream.batches(0, 1_500):
        service.events_batch(batch)
    version = service.pipeline.learner.model_version
    assert version > 0
    control(service, Command("freeze"), timestamp=1)
    assert service.metrics.model_frozen._value.get() == 1
    learned_before = service.pipeline.labels.learned.total()
    scores = 0
    for batch in stream.batches(1_500, 3_000):
        scores += len(service.events_batch(batch).scores)
    assert service.pipeline.learner.model_version == version
    assert service.pipeline.labels.learned.total() > learned_before  # labels still resolve
    assert scores > 0
    control(service, Command("unfreeze"), timestamp=2)
    more = Stream(sim_events(1_000, seed=4))
    more.messages = [
        RawMessage(0, 3_000 + m.offset, m.key, m.value, m.timestamp) for m in more.messages
    ]
    for batch in more.batches(0, 1_000):
        service.events_batch(batch)
    assert service.pipeline.learner.model_version > version


def test_a_rollback_takes_the_model_of_a_checkpoint_and_keeps_the_stream_position(service):
    events = sim_events(3_000)
    stream = Stream(events)
    for batch in stream.batches(0, 1_500):
        service.events_batch(batch)
    service.checkpoint(background=False)
    old = service.pipeline.learner.model_version
    for batch in stream.batches(1_500, 3_000):
        service.events_batch(batch)
    offsets, position = dict(service.pipeline.offsets), service.pipeline.position
    assert service.pipeline.learner.model_version > old > 0

    control(service, Command("rollback", version=old), timestamp=1)

    assert service.pipeline.learner.model_version == old
    assert service.pipeline.offsets == offsets and service.pipeline.position == position
    assert service.metrics.model_version._value.get() == old
    refused = service.metrics.control_commands.labels(command="rollback", result="refused")
    control(service, Command("rollback", version=10**6), timestamp=2)  # not on disk
    assert refused._value.get() == 1 and service.pipeline.learner.model_version == old


def test_a_rollback_target_older_than_an_erasure_comes_back_without_the_user(service):
    events = sim_events(3_000)
    stream = Stream(events)
    for batch in stream.batches(0, 3_000):
        service.events_batch(batch)
    service.checkpoint(background=False)
    old = service.pipeline.learner.model_version
    user = busiest_user(events)
    control(service, Command("erase_user", user_id=user), timestamp=3_001)
    control(service, Command("rollback", version=old), timestamp=3_002)
    assert user not in set(service.pipeline.learner.users())


def test_model_list_shows_each_checkpoint_with_version_offsets_and_auc(service, tmp_path, capsys):
    events = sim_events(3_000)
    stream = Stream(events)
    for stop in (1_000, 3_000):
        for batch in stream.batches(service.next_offset(0), stop):
            service.events_batch(batch)
        service.checkpoint(background=False)
    models = list_models(CheckpointStore(tmp_path, owner="events"))
    assert [m.offsets for m in models] == [{0: 3_000}, {0: 1_000}]
    assert models[0].model_version > models[1].model_version > 0
    assert set(models[0].auc) == {"click", "cart", "purchase"}

    assert main(["model", "list", "--checkpoint-dir", str(tmp_path), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["model_version"] for m in listed] == [m.model_version for m in models]
    assert listed[0]["offsets"] == {"0": 3_000} and listed[0]["frozen"] is False


def test_a_control_record_that_cannot_be_read_is_refused_and_counted(service):
    service.control_batch([RawMessage(0, 0, b"x", b'{"command": "reboot"}', 1)])
    value = service.metrics.registry.get_sample_value
    assert value("recstream_control_commands_total", {"command": "unknown", "result": "refused"})
    assert service.next_control_offset(0) == 1


def test_a_shutdown_does_not_wait_for_a_starved_background_writer_but_supersedes_it(
    service, monkeypatch
):
    stream = Stream(sim_events(400))
    for batch in stream.batches(0, 400):
        service.events_batch(batch)
    worker_pid, state = os.getpid(), service._state

    def starved_writer() -> dict[str, Any]:  # idle CPU that never comes, in the forked child
        if os.getpid() != worker_pid:
            time.sleep(600)
        return state()

    monkeypatch.setattr(service, "_state", starved_writer)
    service.checkpoint(background=True)
    shutdown = threading.Thread(target=service.checkpoint, kwargs={"background": False})
    shutdown.start()
    shutdown.join(timeout=120)  # a hang guard: without the fix it waits 600 s
    assert not shutdown.is_alive(), "the shutdown waited for the starved writer"
    found, refused = service.store.load_latest()
    assert refused == [] and found.offsets == {0: 400}
    assert [p.name for p in service.store.directory.glob("checkpoint-*.pt")] == [found.path.name]
