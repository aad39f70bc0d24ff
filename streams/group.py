"""This worker as one member of a group that learns one model: partitions in and out, updates.

:class:`GroupMember` is the worker service's side of :mod:`streams.sync`:

- :meth:`~GroupMember.take_update` takes this worker's next update between
  batches (its learner's changes, and the offsets, applied counts, ledger and
  label changes of each partition it owns), to encode and send;
- :meth:`~GroupMember.sync_batch` applies peers' updates read from ``sync``;
- :meth:`~GroupMember.assigned` and :meth:`~GroupMember.revoked` follow the
  consumer group: a partition taken over continues from the latest state
  published for it; a partition lost is dropped (its open labels, dedup
  window, offsets), after a last update that hands it over;
- :meth:`~GroupMember.owns` tells which messages and scores are this worker's;
  :meth:`~GroupMember.leads` whether it publishes the group's model snapshots
  and item demand (the owner of partition 0; every worker counts demand, its
  own events' counts travel in its updates).

Everything here runs in the worker's event loop, between batches.

Example
-------
>>> from online_models.config import MultiTaskConfig
>>> from online_models.learner import mtl
>>> pipeline = Pipeline(mtl(MultiTaskConfig(user_rows=1024, item_rows=1024)))
>>> member = GroupMember(pipeline, Metrics(), ledger=None, marks={})
>>> member.assigned([0, 1])
>>> pending = member.take_update()  # nothing learned yet, but the partitions are news
>>> sorted(pending.update.partitions), len(pending.chunks())
([0, 1], 1)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from online_models.partition_log import PartitionLog
from online_models.replica import ModelDelta, Replica
from streams.ledger import ApplyLedger
from streams.metrics import Metrics
from streams.pipeline import Pipeline, RawMessage
from streams.sync import Assembler, SyncState, Update

log = logging.getLogger("recstream.worker")


@dataclass
class PendingUpdate:
    """An update taken between batches, still to be encoded (tens of ms: in a thread)."""

    update: Update
    delta: ModelDelta
    metrics: Metrics

    def chunks(self) -> list[bytes]:
        """The ``sync`` record values, counted in the metrics."""
        chunks = replace(self.update, model=self.delta.to_bytes()).to_chunks()
        self.metrics.sync_sent.inc()
        self.metrics.sync_bytes.inc(sum(len(c) for c in chunks))
        return chunks


class GroupMember:
    """Partition ownership and model updates of one worker (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        ledger: ApplyLedger | None,
        marks: dict[int, tuple[int, int]],
        state: SyncState | None = None,
    ) -> None:
        self.state = state or SyncState()
        # a restart keeps its id: its updates after the restored checkpoint are its own
        self.worker = self.state.worker = self.state.worker or uuid.uuid4().hex[:12]
        self.pipeline = pipeline
        self.metrics = metrics
        self.ledger = ledger
        self.marks = marks  # the service's: partition -> last message (offset, crc)
        self.owned: set[int] | None = None  # None until the group first assigns partitions
        self.replica = Replica(pipeline.learner)
        self._assembler = Assembler(self.state)
        self._seq = self.state.vector.get(self.worker, 0)
        self._sent_offsets: dict[int, int] = {}
        self._position_at_take = pipeline.position
        self._position_at_restore = pipeline.position
        if pipeline.demand is not None:  # its own counts go out in its updates
            pipeline.demand.sharing = True

    def owns(self, partition: int) -> bool:
        """Whether this worker applies ``partition`` (all of them until the first assignment)."""
        return self.owned is None or partition in self.owned

    def leads(self) -> bool:
        """Whether this worker owns ``events`` partition 0 (or has no assignment yet): it
        publishes the group's model snapshots and makes the item demand forecasts."""
        return self.owns(0)

    def rebased(self, pipeline: Pipeline) -> None:
        """The learner was replaced (a rollback): its state is the base of the next update."""
        self.pipeline = pipeline
        self.replica = Replica(pipeline.learner)

    # ---------------------------------------------------------------- updates out

    def take_update(
        self, leaving: Collection[int] = (), partitions: int = 0
    ) -> PendingUpdate | None:
        """This worker's update since its last (None when nothing changed), to encode and
        send in that order. ``leaving``: partitions being revoked, handed over in it;
        ``partitions``: how many ``events`` has (0: unknown), for this worker's share."""
        owned = set(self.owned or ()) | set(leaving)
        offsets = {p: self.pipeline.offsets.get(p, 0) for p in owned}
        delta = self.replica.take(self.share(owned, partitions))
        self._position_at_take = self.pipeline.position
        if delta.steps == 0 and offsets == self._sent_offsets and not leaving:
            return None
        partitions = {p: self._partition_record(p) for p in sorted(owned)}
        self._seq += 1
        update = Update(
            self.worker,
            self._seq,
            int(time.time() * 1000),
            b"",
            partitions,
            self.pipeline.pool.take_user_changes(),
            self.metrics.counter_values(),
            demand={} if self.pipeline.demand is None else self.pipeline.demand.take_counts(),
        )
        self.state.record(update, labels=False)  # its own labels are live in the pipeline
        for partition in leaving:  # ...until they leave it: kept whole, as a peer keeps them
            self.state.labels.apply(partition, self._whole_labels(partition))
        self._sent_offsets = offsets
        return PendingUpdate(update, delta, self.metrics)

    def update_due(self, events: int) -> bool:
        """Whether this worker applied ``events`` events since its last update was taken."""
        return self.pipeline.position - self._position_at_take >= events

    def share(self, owned: Collection[int], partitions: int) -> float:
        """The part of the stream ``owned`` is (1 before the first assignment or when the
        partition count is unknown): what this worker's dense steps weigh in the model."""
        if self.owned is None or partitions <= 0:
            return 1.0
        return min(1.0, len(owned) / partitions)

    def alone(self, partitions: int) -> bool:
        """Whether this worker owns all ``partitions`` (no peer learns: updates can wait)."""
        return self.owned is not None and len(self.owned) >= partitions > 0

    def _partition_record(self, partition: int) -> dict[str, Any]:
        pipeline = self.pipeline
        record: dict[str, Any] = {
            "offset": pipeline.offsets.get(partition, 0),
            "applied": pipeline.applied_in.get(partition, 0),
            "labels": pipeline.labels.partition_changes(partition),
            "mark": list(self.marks.get(partition, ())),
        }
        if self.ledger is not None:
            record["ledger"] = self.ledger.export(partition)
        return record

    def state_dict(self) -> dict[str, Any]:
        """The sync state for a checkpoint, with the whole label state of the partitions this
        worker owns (a checkpoint is taken right after an update: the updates it replays on
        a restart continue from there)."""
        labels = PartitionLog.from_state(self.state.labels.state_dict())
        for partition in self.owned if self.owned is not None else list(self.pipeline.offsets):
            labels.apply(partition, self._whole_labels(partition))
        return self.state.state_dict(labels)

    def _whole_labels(self, partition: int) -> dict[str, Any]:
        """``partition``'s whole label state, as a change that replaces what a log holds."""
        return {"full": True, **self.pipeline.labels.export_partition(partition)}

    # ---------------------------------------------------------------- updates in

    def sync_batch(self, messages: Sequence[RawMessage]) -> int:
        """Apply the peers' updates completed by ``messages``; return how many."""
        applied = 0
        for message in messages:
            if message.offset < self.state.position:
                continue
            self.state.position = message.offset + 1
            update = self._assembler.add(message.value or b"")
            if update is None or self.state.holds(update):
                continue  # a chunk, or this worker's own, or applied before a restore
            if update.worker == self.worker and self._reapplying():
                self._pass_over(update)
                continue
            self._apply(update)
            applied += 1
        return applied

    def _reapplying(self) -> bool:
        """Whether this worker has applied events since its restore: from the restored
        checkpoint's offsets, so again the ones its previous self's later updates hold."""
        return self.pipeline.position != self._position_at_restore

    def _pass_over(self, update: Update) -> None:
        """An update of this worker's previous self read only after this run applied events
        (catching up on ``sync`` gave up): its model changes are of events this run is
        applying again, so it is held as read, never applied (no event learned twice)."""
        log.error(
            "update %d of this worker's previous run read after events were applied again "
            "from the checkpoint: passed over (a peer that took its partitions over keeps "
            "what it learned; this worker's model does not)",
            update.seq,
        )
        self.state.hold(update.worker, update.seq)
        self._seq = max(self._seq, update.seq)

    def _apply(self, update: Update) -> None:
        self.replica.apply(ModelDelta.from_bytes(update.model))
        self.pipeline.pool.apply_user_changes(update.users)
        if self.pipeline.demand is not None:
            self.pipeline.demand.add_counts(update.demand)
        self.state.record(update)
        if update.worker == self.worker:  # sent after the checkpoint this run restored
            self._seq = max(self._seq, update.seq)
            self.metrics.raise_counters_to(update.counters)
        for partition in update.partitions:
            if self.owned is not None and partition in self.owned:
                log.warning(
                    "worker %s published events partition %d, which this worker owns: "
                    "taking its state over (the model already holds what it applied)",
                    update.worker,
                    partition,
                )
                self._take_over(partition)
        self.metrics.sync_applied.inc()
        self.metrics.sync_lag.observe(max(0.0, time.time() - update.ts_ms / 1000))

    # ---------------------------------------------------------------- ownership

    def assigned(self, partitions: Collection[int]) -> None:
        """The group gave this worker ``partitions`` (after :meth:`sync_batch` caught up)."""
        now = set(partitions)
        before = self.owned if self.owned is not None else set(self.pipeline.offsets)
        for partition in before - now:
            self._drop(partition)
        for partition in now - (self.owned or set()):
            self._take_over(partition)
        self.owned = now
        # leading is decided here only: every rebalance revokes first, and no event comes
        # between (a leader that keeps partition 0 keeps its waiting points)
        if self.pipeline.demand is not None:
            self.pipeline.demand.lead(self.leads())

    def revoked(self, partitions: Collection[int]) -> None:
        """``partitions`` are no longer this worker's: nothing of them is applied from now."""
        if self.owned is not None:
            self.owned -= set(partitions)

    def dropped(self, partitions: Collection[int]) -> None:
        """``partitions`` were handed over (their last update is sent): forget their state."""
        for partition in partitions:
            if self.owned is None or partition not in self.owned:
                self._drop(partition)

    def _take_over(self, partition: int) -> None:
        """Continue ``partition`` from the latest state published for it, if any is newer."""
        record = self.state.partitions.get(partition)
        pipeline = self.pipeline
        if record is None or record["offset"] < pipeline.offsets.get(partition, 0):
            return  # nobody published it after what this worker holds
        pipeline.offsets[partition] = int(record["offset"])
        pipeline.applied_in[partition] = int(record["applied"])
        labels = self.state.labels.export(partition)
        if labels is not None:
            pipeline.labels.import_partition(partition, labels)
        else:  # its changes were never seen whole: its labels in flight are lost
            log.error(
                "no label state for events partition %d: its open labels start empty", partition
            )
            pipeline.quality.forget(pipeline.labels.drop_partition(partition))
        if record.get("mark"):
            offset, crc = record["mark"]
            self.marks[partition] = (int(offset), int(crc))
        else:
            self.marks.pop(partition, None)
        if self.ledger is not None:
            self.ledger.load(partition, record.get("ledger", []))
        if record["worker"] != self.worker:
            self.metrics.partitions_taken_over.inc()
            log.warning(
                "took over events partition %d at offset %d from worker %s",
                partition,
                record["offset"],
                record["worker"],
            )

    def _drop(self, partition: int) -> None:
        pipeline = self.pipeline
        pipeline.quality.forget(pipeline.labels.drop_partition(partition))
        pipeline.offsets.pop(partition, None)
        self.marks.pop(partition, None)
