"""What the worker does between Faust and the pipeline: metrics, checkpoints, the outbox.

:class:`WorkerService` owns the :class:`~streams.pipeline.Pipeline`, restores
it from the newest valid checkpoint at start, turns each batch's results into
messages to send, keeps every dead letter in an outbox until the broker has
acknowledged it (:mod:`streams.outbox`; the outbox is part of every
checkpoint, so a rejected message is never lost), updates the Prometheus metrics, and
writes checkpoints (periodically from a forked child process, and at shutdown).

Garbage collection is kept off the latency path by :mod:`streams.gc_freeze`.

Example
-------
>>> import tempfile
>>> from streams.settings import Settings
>>> service = WorkerService(Settings(checkpoint_dir=tempfile.mkdtemp()))   # doctest: +SKIP
>>> service.next_offset(0)                                                # doctest: +SKIP
0
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson

from online_models.base import TASKS
from online_models.learner import mtl
from online_models.transfer import init_from
from streams.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    ChildSave,
    learner_state_of,
    save_in_child,
)
from streams.control import Command, parse_command
from streams.faults import FaultPlan, FullDiskStore
from streams.gc_freeze import GcFreezer
from streams.group import GroupMember
from streams.ledger import ApplyLedger
from streams.metrics import Metrics
from streams.model_ops import find_model
from streams.outbox import DeadLetterOutbox, Letter
from streams.pipeline import BatchResult, Pipeline, RawMessage
from streams.prediction_log import PredictionLog
from streams.settings import Settings
from streams.snapshots import latest_snapshot, publish_snapshot
from streams.sync import SyncState

log = logging.getLogger("recstream.worker")

CHECKPOINT_TIMEOUT_S = 600.0
"""A background checkpoint writer still busy after this long is stuck and killed (a 33 MB
save takes about 2 s; ``recstream_last_checkpoint_timestamp_seconds`` shows the age)."""


@dataclass
class Outgoing:
    """Messages to send for one batch: numbered dead letters, scores, and their event times."""

    dead_letters: dict[int, Letter] = field(default_factory=dict)
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)
    score_event_ts: list[int] = field(default_factory=list)
    tombstones: list[bytes] = field(default_factory=list)  # erased users' keys on ``scores``
    stall: str | None = None  # an injected fault that stalls this batch's publish (tests only)


class WorkerService:
    """The pipeline plus everything a long-running worker needs around it."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.pipeline = self._new_pipeline()
        self.store = CheckpointStore(
            settings.checkpoint_dir, owner=settings.topics.events, keep=settings.keep_checkpoints
        )
        self.dead_letters = DeadLetterOutbox()
        self.catalog_offsets: dict[int, int] = {}
        self.control_offsets: dict[int, int] = {}
        self.faults = FaultPlan.parse(settings.faults, settings.checkpoint_dir)
        self.exit_status = 0  # the process's, once it stops (streams.app sets a failure's)
        self.ledger = ApplyLedger() if settings.ledger else None
        self._marks: dict[int, tuple[int, int]] = {}  # partition -> last message (offset, crc)
        self._stale_from: dict[int, int] = {}  # partition -> offset read from before its reset
        self._checkpoints_started = 0
        self._freezer = GcFreezer()
        self._last_checkpoint = time.monotonic()
        self._saving: threading.Thread | None = None  # waits for the writer below
        self._writing: ChildSave | None = None
        self._model_version = 0
        self.restored_from: str | None = None
        self._sync_state: SyncState | None = None
        self._last_snapshot = -math.inf  # the first checkpoint is published at once
        self.initialised_from: str | None = None
        self._saved_offsets: dict[int, int] = {}
        self._offsets_on_disk: dict[int, int] = {}  # of the newest checkpoint written
        self._saved_lock = threading.Lock()
        self.metrics.last_checkpoint.set(time.time())  # the restored one's time, if any
        self._restore()
        if self.restored_from is None and settings.init_from is not None:
            self._init_from(settings.init_from)
        self.predictions_log = PredictionLog.attach(self.pipeline.quality, settings.predictions_log)
        self.group = (
            GroupMember(self.pipeline, self.metrics, self.ledger, self._marks, self._sync_state)
            if settings.sync_interval_s > 0
            else None
        )
        self.refresh_slow_metrics()

    # ------------------------------------------------------------ start

    def _new_pipeline(self) -> Pipeline:
        settings = self.settings
        return Pipeline(
            mtl(settings.model_config()),  # towers, task weights, threads: the settings'
            labels=settings.label_config(),
            ranking=settings.ranking_config(),
            events_topic=settings.topics.events,
            demand=settings.demand_config(),
        )

    def _restore(self) -> None:
        """Restore the newest checkpoint whose state loads; refuse (and log) every newer one.

        A checkpoint can be readable and still not fit (a broken or
        incompatible state): then the pipeline is built afresh, so nothing of
        the half-loaded state stays, and the next older one is tried.
        """
        for found in self._checkpoints():
            if isinstance(found, CheckpointError):
                log.error("refused checkpoint %s", found)
                continue
            try:
                self.pipeline.load_state_dict(found.state["pipeline"], found.offsets)
                outbox = [(key, value) for key, value in found.state["outbox"]]
                catalog_offsets = {
                    int(p): int(o) for p, o in found.state["catalog_offsets"].items()
                }
                control_offsets = {
                    int(p): int(o) for p, o in found.state.get("control_offsets", {}).items()
                }
                ledger = _restored_ledger(self.settings.ledger, found.state)
                marks = {int(p): (int(o), int(c)) for p, o, c in found.state.get("log_marks", [])}
                sync_state = SyncState.from_state(found.state.get("sync"))
                if found.path.parent != self.store.directory:  # the group's snapshot
                    sync_state.worker = None  # its writer's id is not this worker's
            except Exception as err:  # any mismatch in a state we wrote ourselves
                log.error(
                    "refused checkpoint %s: its state does not load (%r)", found.path.name, err
                )
                self.pipeline = self._new_pipeline()
                continue
            self.catalog_offsets = catalog_offsets
            self.control_offsets = control_offsets
            self.ledger = ledger
            self._marks = marks
            self._sync_state = sync_state
            self._restored(found, outbox)
            return

    def _checkpoints(self) -> Iterator[Checkpoint | CheckpointError]:
        """This worker's checkpoints, newest first; without any, the group's latest snapshot
        (a worker that joins starts from the model its peers hold, :mod:`streams.snapshots`)."""
        found_any = False
        for found in self.store.newest_first():
            found_any = True
            yield found
        if not found_any and self.settings.broker and self.settings.sync_interval_s > 0:
            snapshot = latest_snapshot(self.settings)
            if snapshot is not None:
                log.warning("no checkpoint of its own: starting from the group's model snapshot")
                yield snapshot

    def _init_from(self, path: Path) -> None:
        """A new shop: start the learner from another worker's checkpoint's shared parts.

        Only when there is no checkpoint of this worker's own: a restart resumes
        its own state. A file that cannot be read, or a learner of another
        configuration, stops the worker (CheckpointError, ValueError): a new
        shop silently started from scratch would not be what was asked for.
        """
        init_from(self.pipeline.learner, learner_state_of(path))
        self.initialised_from = str(path)
        log.warning("a new shop: the model starts from the shared layers of %s", path)

    def _restored(self, found: Checkpoint, outbox: list[Letter]) -> None:
        self.dead_letters = DeadLetterOutbox(outbox)
        self.restored_from = found.path.name
        self._offsets_on_disk = dict(found.offsets)
        self.metrics.last_checkpoint.set(found.created_unix)
        if "counters" in found.state:  # counters continue from what the restored state saw
            self.metrics.continue_counters(found.state["counters"])
        self._model_version = self.pipeline.learner.model_version
        self.metrics.model_version.set(self._model_version)
        self.metrics.model_frozen.set(self.pipeline.frozen)
        log.warning("restored %s: events up to offsets %s", found.path.name, found.offsets)

    def events_reset(self, partition: int, offset: int, read_ahead: bool = False) -> None:
        """``events`` partition ``partition`` no longer holds ``offset``: read it from its start.

        ``read_ahead``: messages of the new log at ``offset`` and beyond may
        have been read before the reset was found; they are dropped until
        the partition's messages come from below ``offset`` again (from the
        start), or they would move the offsets past what was never applied.
        """
        log.error(
            "events partition %d has no offset %d any more (topic recreated, broker restarted "
            "empty, or retention): reading it again from its start; what the model learned stays",
            partition,
            offset,
        )
        self.pipeline.offsets[partition] = 0
        self._marks.pop(partition, None)
        if read_ahead:
            self._stale_from[partition] = offset
        if self.ledger is not None:
            self.ledger.reset(partition)
        self.metrics.offset_resets.labels(topic="events").inc()

    def catalog_reset(self, partition: int, offset: int, read_ahead: bool = False) -> None:
        """``items`` partition ``partition`` no longer holds ``offset``: read it from its start."""
        log.error(
            "items partition %d has no offset %d any more: reading it again", partition, offset
        )
        self.catalog_offsets[partition] = 0
        self.metrics.offset_resets.labels(topic="items").inc()

    def control_reset(self, partition: int, offset: int, read_ahead: bool = False) -> None:
        """``control`` no longer holds ``offset``: read it again (commands are idempotent)."""
        log.error(
            "control partition %d has no offset %d any more: reading it again", partition, offset
        )
        self.control_offsets[partition] = 0
        self.metrics.offset_resets.labels(topic="control").inc()

    def next_sync_offset(self, partition: int) -> int:
        """The next ``sync`` offset not yet read (0: from the start)."""
        return self.group.state.position if self.group is not None else 0

    def sync_reset(self, partition: int, offset: int, read_ahead: bool = False) -> None:
        """``sync`` no longer holds ``offset`` (broker restarted empty): read it from its start;
        the updates held are known by their workers' sequence numbers and not applied twice."""
        log.error("sync has no offset %d any more: reading it again", offset)
        if self.group is not None:
            self.group.state.position = 0
        self.metrics.offset_resets.labels(topic="sync").inc()

    def sync_batch(self, messages: Sequence[RawMessage]) -> None:
        """Apply the peers' model updates in ``messages`` (:mod:`streams.group`)."""
        if self.group is not None and self.group.sync_batch(messages):
            self._model_version = self.pipeline.learner.model_version  # peers' steps: not ours
            self.metrics.model_version.set(self._model_version)

    def next_control_offset(self, partition: int) -> int:
        """The next ``control`` offset of ``partition`` not yet applied (0: from the start)."""
        return self.control_offsets.get(partition, 0)

    def next_catalog_offset(self, partition: int) -> int:
        """The next ``items`` offset of ``partition`` not yet applied (0: from the start)."""
        return self.catalog_offsets.get(partition, 0)

    def log_matches(self, partition: int, offset: int, value: bytes | None) -> bool:
        """Whether ``value``, read at ``offset`` of ``partition``, is the last message applied.

        True when the state knows no last message at that offset (nothing to
        tell them apart by).
        """
        mark = self._marks.get(partition)
        return mark is None or mark[0] != offset or mark[1] == zlib.crc32(value or b"")

    def next_offset(self, partition: int) -> int:
        """The next ``events`` offset of ``partition`` not yet applied (where reading resumes)."""
        return self.pipeline.offsets.get(partition, 0)

    def assigned(self, partitions: Sequence[int]) -> None:
        """The ``events`` partitions this worker owns after a rebalance (positions are taken
        from the group's latest state of each: see :mod:`streams.group`)."""
        if self.group is not None:
            self.group.assigned(partitions)
        self.metrics.assigned_partitions.set(len(partitions))
        for gauge in (self.metrics.consumer_lag, self.metrics.consumer_lag_seconds):
            gauge.clear()  # no series left behind for partitions now owned elsewhere

    def observe_lag(self, waiting: dict[int, int], now_ms: float | None = None) -> None:
        """Lag per owned partition: ``waiting`` messages, and seconds behind in event time."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        for partition, count in waiting.items():
            label = str(partition)
            watermark = self.pipeline.resolver.partition_watermark(partition)
            self.metrics.consumer_lag.labels(partition=label).set(count)
            self.metrics.consumer_lag_seconds.labels(partition=label).set(
                seconds_behind(count, watermark, now_ms)
            )

    def take_saved_offsets(self) -> dict[int, int]:
        """Offsets of the newest checkpoint written since the last call (to commit), or {}."""
        with self._saved_lock:
            saved, self._saved_offsets = self._saved_offsets, {}
        return saved

    def credentials(self) -> Any:
        """SASL/TLS settings in Faust's terms (None for plaintext)."""
        security = self.settings.security
        if security.sasl_mechanism:
            return faust.SASLCredentials(
                username=security.sasl_username,
                password=security.sasl_password,
                mechanism=security.sasl_mechanism,
                ssl_context=_ssl_context(security) if "SSL" in (security.protocol or "") else None,
            )
        if security.protocol == "SSL":
            return faust.SSLCredentials(_ssl_context(security))
        return None

    # ------------------------------------------------------------ batches

    def events_batch(self, messages: Sequence[RawMessage]) -> Outgoing:
        """Apply one batch of ``events`` messages; return what to send."""
        if self._stale_from:
            messages = self._without_stale(messages)
        if self.group is not None and self.group.owned is not None:  # read before a revoke
            messages = [m for m in messages if m.partition in self.group.owned]
        if self.faults:
            self.faults.check_batch((m.partition, m.offset) for m in messages)
        before = dict(self.pipeline.offsets) if self.ledger is not None else None
        started = time.thread_time()
        result = self.pipeline.process_events(messages)
        if before is not None:
            record_applied(self.ledger, messages, before, result.dead_letters)
        self._mark_last(messages)
        outgoing = self._outgoing(result.dead_letters, result.scores)
        self.metrics.pipeline_cpu.inc(time.thread_time() - started)
        self._observe(result)
        self._freezer.tick()
        if self.faults:
            positions = [(m.partition, m.offset) for m in messages]
            self.faults.stall_batch(positions)  # applied, nothing of it published yet
            outgoing.stall = self.faults.stall_publish_due(positions)
        return outgoing

    def _without_stale(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        """``messages`` without those read from a reset partition's old position."""
        kept = []
        for message in messages:
            stale_from = self._stale_from.get(message.partition)
            if stale_from is not None:
                if message.offset >= stale_from:
                    continue
                del self._stale_from[message.partition]  # read from the start again
            kept.append(message)
        return kept

    def _mark_last(self, messages: Sequence[RawMessage]) -> None:
        """Remember the last message consumed of each partition (its offset and checksum)."""
        offsets = self.pipeline.offsets
        for message in reversed(messages):
            partition = message.partition
            if message.offset + 1 == offsets.get(partition) and (
                self._marks.get(partition, (-1, 0))[0] != message.offset
            ):
                self._marks[partition] = (message.offset, zlib.crc32(message.value or b""))

    def catalog_batch(self, messages: Sequence[RawMessage]) -> Outgoing:
        """Apply one batch of ``items`` messages (those below the catalog offsets are skipped)."""
        fresh = [m for m in messages if m.offset >= self.catalog_offsets.get(m.partition, 0)]
        for message in fresh:
            self.catalog_offsets[message.partition] = message.offset + 1
        result = self.pipeline.process_catalog(fresh, self.settings.topics.items)
        self.metrics.catalog_items_removed.inc(result.removed)
        self._observe_catalog()
        for letter in result.dead_letters:
            self.metrics.invalid_events.labels(reason=letter.reason).inc()
        return self._outgoing(result.dead_letters, [])

    def control_batch(self, messages: Sequence[RawMessage]) -> Outgoing:
        """Apply operator commands (:mod:`streams.control`) in order; an erasure's tombstone
        for ``scores`` is in what to send."""
        out = Outgoing()
        for message in messages:
            if message.offset < self.control_offsets.get(message.partition, 0):
                continue
            self.control_offsets[message.partition] = message.offset + 1
            try:
                command = parse_command(message.value)
            except ValueError as err:
                log.error("control record at offset %d refused: %s", message.offset, err)
                self.metrics.control_commands.labels(command="unknown", result="refused").inc()
                continue
            applied = self._apply(command, message.timestamp, out)
            result = "applied" if applied else "refused"
            self.metrics.control_commands.labels(command=command.name, result=result).inc()
        return out

    def _apply(self, command: Command, record_ms: int, out: Outgoing) -> bool:
        """Carry out one command; whether it could be."""
        if command.name == "erase_user":
            self.pipeline.erase_user(command.user_id, record_ms)
            out.tombstones.append(command.user_id.encode())
            log.warning("erased a user (control record time %d)", record_ms)
        elif command.name in ("freeze", "unfreeze"):
            self.pipeline.frozen = command.name == "freeze"
            self.metrics.model_frozen.set(self.pipeline.frozen)
            log.warning("learning %s", "frozen" if self.pipeline.frozen else "resumed")
        else:
            return self.roll_back(command.version)
        return True

    def roll_back(self, version: int) -> bool:
        """Serve and learn from the model of ``version``, found among the checkpoints on disk.

        Only the learner goes back; offsets, labels, quality and candidates
        stay (see :mod:`streams.model_ops`), so no event is applied twice.
        """
        found = find_model(self.store, version)
        if found is None:
            log.error("rollback to model version %d: no checkpoint on disk holds it", version)
            return False
        learner = mtl(self.settings.model_config())
        try:
            learner.load_state_dict(found.state["pipeline"]["learner"])
        except Exception as err:  # a state we wrote ourselves that does not fit: keep ours
            log.error(
                "rollback to model version %d: %s does not load (%r)", version, found.path.name, err
            )
            return False
        self.pipeline.replace_model(learner)
        if self.group is not None:
            self.group.rebased(self.pipeline)
        self._model_version = self.pipeline.learner.model_version
        self.metrics.model_version.set(self._model_version)
        log.warning("rolled back to model version %d of %s", version, found.path.name)
        return True

    def published(self, outgoing: Outgoing) -> None:
        """The batch's scores are with the producer: count them and their latency."""
        now_ms = time.time() * 1000
        for event_ts in outgoing.score_event_ts:
            self.metrics.event_to_score_latency.observe(max(0.0, now_ms - event_ts) / 1000)
        self.metrics.scores_published.inc(len(outgoing.scores))
        if outgoing.stall:
            self.faults.stall_publish(outgoing.stall)  # scores with the producer, not flushed

    def demand_round(self) -> list[tuple[bytes, bytes]]:
        """Item demand records to send this round (key item_id), bounded."""
        return [(d["item_id"].encode(), orjson.dumps(d)) for d in self.pipeline.take_demand()]

    def demand_published(self, count: int) -> None:
        """``count`` demand records are with the producer."""
        self.metrics.demand_forecasts_published.inc(count)

    def _outgoing(self, dead_letters: Sequence[Any], scores: Sequence[dict]) -> Outgoing:
        return Outgoing(
            dead_letters=self.dead_letters.add((d.key, d.to_json()) for d in dead_letters),
            scores=[
                (s["user_id"].encode(), orjson.dumps(s))  # compact JSON, ~15x json.dumps
                for s in scores
            ],
            score_event_ts=[s["event_ts"] for s in scores],
        )

    # ------------------------------------------------------------ metrics

    def _observe(self, result: BatchResult) -> None:
        m, pipeline = self.metrics, self.pipeline
        for event in result.events:
            m.events.labels(type=event.type).inc()
        for letter in result.dead_letters:
            m.invalid_events.labels(reason=letter.reason).inc()
        for detection in result.drift:
            m.drift_detections.labels(task=detection["task"], detector=detection["detector"]).inc()
            log.warning(
                "drift detected: task %s, detector %s, at event %d of this worker",
                detection["task"],
                detection["detector"],
                detection["event"],
            )
        version = pipeline.learner.model_version
        m.model_updates.inc(max(0, version - self._model_version))
        self._model_version = version
        m.model_version.set(version)
        m.update_duration.observe(result.update_seconds)
        m.erased_events.inc(result.erased)
        for task, count in zip(TASKS, result.learned, strict=True):
            m.samples_learned.labels(task=task).inc(count)
        m.pending_labels.set(pipeline.resolver.open_samples)
        if pipeline.demand is not None:
            m.demand_deviance.set(pipeline.demand.rolling_deviance())

    def _observe_catalog(self) -> None:
        catalog = self.pipeline.catalog
        self.metrics.catalog_items.set(len(catalog))
        self.metrics.catalog_items_withdrawn.set(len(catalog.withdrawn))

    def refresh_slow_metrics(self) -> None:
        """Metrics that cost more than a counter bump: the worker's timer calls this every second.

        On a timer, not per batch: a worker that went idle still shows the
        figures of everything it applied.
        """
        m, pipeline = self.metrics, self.pipeline
        for task, values in pipeline.quality.summary().items():
            have, need = pipeline.quality.warm_up(task)
            m.warmup_labels.labels(task=task).set(have)
            m.warmup_needed.set(need)
            m.auc.labels(task=task).set(values["auc"])
            m.logloss.labels(task=task).set(values["logloss"])
            m.label_rate.labels(task=task).set(values["label_rate"])
            m.mean_prediction.labels(task=task).set(values["mean_prediction"])
        for feature, value in pipeline.features.latest.items():
            m.feature_psi.labels(feature=feature).set(value)
        health = pipeline.learner.health()
        for table, rows in health.table_rows.items():
            m.embedding_rows.labels(table=table).set(rows)
        if health.cold_items is not None:
            m.cold_items.set(health.cold_items)
        self._observe_catalog()

    # ------------------------------------------------------------ checkpoints

    def wait_for_checkpoint(self) -> None:
        """Block until the background checkpoint being written, if any, is on disk (or failed).

        An erasure waits so: stopping the writer instead would let a run of
        erasures, each arriving before the last checkpoint is done, stop every one.
        """
        if self._saving is not None:
            self._saving.join()

    def stop_background_checkpoint(self) -> None:
        """Stop the background checkpoint still being written, if any: the caller writes a
        newer one. Its writer runs at low priority, so on a saturated machine waiting for it
        could hold a shutdown up (a CI run's SIGTERM waited 300 s for an idle-priority one)."""
        if self._saving is not None and self._saving.is_alive():
            self._writing.stop()  # set with _saving
            self._saving.join()

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s

    def unsaved(self) -> bool:
        """Whether events were applied beyond the newest checkpoint written (or it failed)."""
        return self.pipeline.offsets != self._offsets_on_disk

    def checkpoint(self, background: bool) -> None:
        """Save everything with the offsets it covers; from a forked child if ``background``.

        A background save (:func:`~streams.checkpoint.save_in_child`) stops the
        worker only for the fork; a thread waits for the child and then hands
        the offsets over for committing (:meth:`take_saved_offsets`).
        """
        self._last_checkpoint = time.monotonic()
        if background and self._saving is not None and self._saving.is_alive():
            return  # the previous one is still being written
        self.stop_background_checkpoint()  # a foreground one supersedes it
        offsets = dict(self.pipeline.offsets)
        self._checkpoints_started += 1
        store = self.store
        if self.faults and self.faults.disk_full(self._checkpoints_started):
            store = FullDiskStore(self.store)
        if not background:
            self._saved(store.save(self._state(), offsets), offsets)
            return
        child = self._writing = save_in_child(store, self._state, offsets)
        self._saving = threading.Thread(
            target=self._await_child, args=(child, offsets), name="checkpoint", daemon=True
        )
        self._saving.start()

    def _state(self) -> dict[str, Any]:
        state = {
            "pipeline": self.pipeline.state_dict(),
            "outbox": [list(letter) for letter in self.dead_letters.letters()],
            "catalog_offsets": dict(self.catalog_offsets),
            "control_offsets": dict(self.control_offsets),
            "counters": self.metrics.counter_values(),
        }
        state["log_marks"] = [[p, o, crc] for p, (o, crc) in self._marks.items()]
        if self.group is not None:
            state["sync"] = self.group.state_dict()
        if self.ledger is not None:
            state["ledger"] = self.ledger.state_dict()
        return state

    def _await_child(self, child: ChildSave, offsets: dict[int, int]) -> None:
        try:
            path = child.wait(CHECKPOINT_TIMEOUT_S)
        except CheckpointError as err:
            if child.stopped:
                log.info("background checkpoint stopped: a newer one supersedes it")
            else:
                log.error("background checkpoint failed: %s", err)
            return
        self._saved(path, offsets)

    def _saved(self, path: Path, offsets: dict[int, int]) -> None:
        with self._saved_lock:
            self._saved_offsets = offsets
            self._offsets_on_disk = offsets
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(time.time())
        log.info("checkpoint %s at offsets %s", path.name, offsets)
        self._publish_snapshot(path)

    def _publish_snapshot(self, path: Path) -> None:
        """Send the checkpoint at ``path`` to ``model`` for joining workers, when due: from the
        owner of ``events`` partition 0 only, every ``snapshot_interval_s``."""
        group = self.group
        if group is None or not self.settings.broker or not group.leads():
            return
        if time.monotonic() - self._last_snapshot < self.settings.snapshot_interval_s:
            return
        self._last_snapshot = time.monotonic()
        try:
            size = publish_snapshot(self.settings, path)
        except Exception as err:  # joiners replay more of sync: nothing is lost
            log.error("model snapshot not published: %r", err)
            return
        self.metrics.snapshots_published.inc()
        log.info("model snapshot %s published (%d bytes)", path.name, size)


def record_applied(
    ledger: ApplyLedger,
    messages: Sequence[RawMessage],
    before: dict[int, int],
    rejected: Sequence[Any],
) -> None:
    """Enter in ``ledger`` the messages a batch applied to the model state.

    Applied: those at or above their partition's next offset ``before`` the
    batch (the pipeline skips the rest), except the ones it dead-lettered.

    >>> from streams.pipeline import DeadLetter
    >>> ledger = ApplyLedger()
    >>> batch = [RawMessage(0, o, None, b"") for o in (4, 5, 6, 7)]
    >>> bad = DeadLetter(None, "not_json", "", b"", "events", 0, 6)
    >>> record_applied(ledger, batch, {0: 5}, [bad])
    >>> ledger.runs(0)
    [[5, 6], [7, 8]]
    """
    skipped = {(d.partition, d.offset) for d in rejected}
    next_offset = dict(before)
    for message in messages:
        partition, offset = message.partition, message.offset
        if offset < next_offset.get(partition, 0):
            continue
        next_offset[partition] = offset + 1
        if (partition, offset) not in skipped:
            ledger.applied(partition, offset)


def _restored_ledger(enabled: bool, state: dict[str, Any]) -> ApplyLedger | None:
    """The ledger of a restored state (a fresh one if it was written without one)."""
    if not enabled:
        return None
    return ApplyLedger.from_state(state["ledger"]) if "ledger" in state else ApplyLedger()


def seconds_behind(waiting: int, watermark: int | None, now_ms: float) -> float:
    """How far a partition is behind: now minus its event time while messages wait, else 0.

    >>> seconds_behind(5, 1_000, now_ms=3_500), seconds_behind(0, 1_000, now_ms=3_500)
    (2.5, 0.0)
    """
    if not waiting or watermark is None:
        return 0.0
    return max(0.0, now_ms - watermark) / 1000


def _ssl_context(security: Any) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=security.ssl_cafile)
    if security.ssl_certfile:
        context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
    return context
