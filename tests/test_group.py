"""Two workers' services exchanging updates in-process (no broker): one model, partitions handed
over at the offsets and with the labels of the last update."""

from __future__ import annotations

import zlib

from streams.bench.throughput import demo_stream
from streams.pipeline import RawMessage
from streams.service import WorkerService
from streams.settings import Settings


def _service(tmp_path, name: str) -> WorkerService:
    windows = {"click_wait_s": 1.0, "click_window_s": 2.0, "conversion_window_s": 8.0}
    return WorkerService(Settings(checkpoint_dir=tmp_path / name, **windows))


def _partitioned(messages: list[RawMessage]) -> list[RawMessage]:
    """The demo stream as 4 partitions keyed by user, with offsets per partition."""
    offsets = [0] * 4
    out = []
    for m in messages:
        p = zlib.crc32(m.key) % 4
        out.append(RawMessage(p, offsets[p], m.key, m.value))
        offsets[p] += 1
    return out


def _publish(sender: WorkerService, log: list[RawMessage]) -> None:
    pending = sender.group.take_update()
    if pending is not None:
        for chunk in pending.chunks():
            log.append(RawMessage(0, len(log), None, chunk))


def _send(sender: WorkerService, receiver: WorkerService, log: list[RawMessage]) -> None:
    _publish(sender, log)
    receiver.sync_batch(log)


def test_two_workers_hold_one_model_and_a_partition_moves_with_its_offsets_and_labels(tmp_path):
    catalog, stream = demo_stream(6_000, seed=3)
    stream = _partitioned(stream)
    a, b = _service(tmp_path, "a"), _service(tmp_path, "b")
    for service, owned in ((a, [0, 1]), (b, [2, 3])):
        service.catalog_batch(catalog)
        service.assigned(owned)
    log_to_b: list[RawMessage] = []
    log_to_a: list[RawMessage] = []
    half = len(stream) // 800 * 400  # a whole number of batches
    for start in range(0, half, 400):
        batch = stream[start : start + 400]
        a.events_batch(batch)  # each applies only its own partitions
        b.events_batch(batch)
        _send(a, b, log_to_b)
        _send(b, a, log_to_a)
    steps = a.pipeline.learner.model_version
    assert steps == b.pipeline.learner.model_version > 0  # every step of both, on both
    a_users, b_users = set(a.pipeline.learner.users()), set(b.pipeline.learner.users())
    assert a_users == b_users and len(a_users) > 100  # each learned its own; both hold all

    a_offsets = {p: a.pipeline.offsets[p] for p in (0, 1)}
    open_before = a.pipeline.labels.export_partition(0)["resolver"]["open"]
    a.events_batch(stream[half : half + 400])  # applied, never sent: lost with its worker
    b.assigned([0, 1, 2, 3])  # a died: b takes its partitions from a's last update
    assert {p: b.pipeline.offsets[p] for p in (0, 1)} == a_offsets
    taken = b.pipeline.labels.export_partition(0)["resolver"]["open"]
    assert len(taken) == len(open_before) > 0
    assert sorted(row[1:] for row in taken) == sorted(row[1:] for row in open_before)

    before = b.pipeline.applied_in.copy()
    b.events_batch(stream[half : half + 400])  # the events a applied after its update, again
    moved = [m for m in stream[half : half + 400] if m.partition in (0, 1)]
    assert sum(b.pipeline.applied_in[p] - before[p] for p in (0, 1)) == len(moved)


def test_an_update_is_due_after_sync_events_applied_since_the_last_was_taken(tmp_path):
    catalog, stream = demo_stream(1_200, seed=3)
    stream = _partitioned(stream)
    service = _service(tmp_path, "a")
    service.catalog_batch(catalog)
    service.assigned([0, 1])
    group = service.group
    mine = sum(m.partition in (0, 1) for m in stream[:600])
    service.events_batch(stream[:600])
    assert group.update_due(mine) and not group.update_due(mine + 1)
    group.take_update(partitions=4)
    assert not group.update_due(1)  # counted from the take
    service.events_batch(stream[600:])
    assert group.update_due(sum(m.partition in (0, 1) for m in stream[600:]))


def test_a_restart_learns_its_previous_runs_updates_once_however_late_it_reads_them(tmp_path):
    catalog, stream = demo_stream(9_000, seed=3)
    stream = _partitioned(stream)
    first = _service(tmp_path, "a")
    first.catalog_batch(catalog)
    first.assigned([0, 1, 2, 3])
    log: list[RawMessage] = []
    first.events_batch(stream[:3000])
    _publish(first, log)
    first.checkpoint(background=False)  # right after its update, as the worker does
    first.events_batch(stream[3000:6000])
    _publish(first, log)  # ...and then it dies
    learned = first.pipeline.learner.model_version
    assert learned > 0

    caught_up = _service(tmp_path, "a")  # reads sync before any event
    caught_up.sync_batch(log)
    caught_up.assigned([0, 1, 2, 3])
    assert caught_up.pipeline.learner.model_version == learned
    assert caught_up.pipeline.offsets == first.pipeline.offsets  # taken on after the update

    late = _service(tmp_path, "a")  # gave up catching up: applies from its checkpoint
    late.assigned([0, 1, 2, 3])
    late.events_batch(stream[3000:6000])
    assert late.pipeline.learner.model_version == learned
    late.sync_batch(log)  # the previous run's update arrives now
    assert late.pipeline.learner.model_version == learned  # not learned a second time
    assert late.pipeline.offsets == first.pipeline.offsets
    late.events_batch(stream[6000:])
    assert late.group.take_update().update.seq == 3  # numbered after the one passed over
