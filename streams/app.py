"""The Faust app: its agents over channels of whole micro-batches, its readers, its producer.

Read it as a list of declarations. The work itself lives in
:class:`streams.service.WorkerService` (plain Python), which the agents call
once per micro-batch.

- **Batches in, not messages.** Two tasks read ``events`` and ``items`` in
  bulk (:mod:`streams.reader`, plain aiokafka) and send each batch as one
  value on an in-memory Faust channel; the ``learn`` and ``catalog`` agents
  receive whole batches. Faust's per-message path (about 300 µs of CPU per
  message) is paid once per batch instead.
- **Offsets come from our checkpoints.** The group's committed offsets are
  only ever those of a checkpoint already on disk (committed after it is
  written). On every assignment the reader seeks each partition to the next
  offset the pipeline has not applied (the restored checkpoint's at start),
  and the pipeline skips anything below it: no event is lost to the model
  and none is applied twice.

Example
-------
>>> app = build_app(service=None, bootstrap="127.0.0.1:9092")   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import faust
from aiokafka.errors import ConsumerStoppedError, KafkaError
from faust.tables import TableManager

from streams.outbox import Letter
from streams.pipeline import RawMessage
from streams.reader import EventReader, WholeTopicReader
from streams.topics import ensure_topics

if TYPE_CHECKING:
    from streams.service import Outgoing, WorkerService

T = TypeVar("T")

BATCHES_IN_FLIGHT = 1
"""Batches read ahead of the one being applied (the reader waits when the channel is full).

One: what arrives while a batch is applied then joins the next read, so a
busy worker takes fewer, larger batches. With four, small batches queued
behind each other, each paying the per-batch costs (60-s demos at 2,000
events/s: p50 370 and 194 ms with four, 190 and 130 ms with one)."""
RETRY_DEAD_LETTERS_S = 5.0
"""How often dead letters not yet acknowledged (restored, or whose send failed) are sent again."""
DEMAND_ROUND_S = 1.0
"""The pause between rounds of item demand forecasts that changed (each round bounded)."""
RETRY_UPDATE_S = 1.0
"""How long a model update that the broker refused waits before it is sent again."""
CATCH_UP_IDLE_S = 3.0
"""How long an assignment waits for ``sync`` to move on before it gives up catching up."""
CATCH_UP_TIMEOUT_S = 30.0
"""How long an assignment waits to have applied the updates on ``sync`` (a restart replays
the updates after its checkpoint; a takeover needs its previous owner's last one)."""
EXIT_BATCH_FAILED = 70
"""Exit status when applying a batch raised: the state may hold part of the batch."""
EXIT_CHECKPOINT_FAILED = 74  # EX_IOERR: the shutdown checkpoint could not be written

log = logging.getLogger("recstream.worker")


def build_app(service: WorkerService, bootstrap: str) -> faust.App:
    """The worker's Faust app, wired to ``service``."""
    settings = service.settings
    datadir = Path(settings.checkpoint_dir) / "faust"  # Faust's own files, not in the cwd
    datadir.mkdir(parents=True, exist_ok=True)
    app = WorkerApp(
        f"recstream-{settings.topic_prefix}app",
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        broker_credentials=service.credentials(),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        datadir=str(datadir),
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        broker_session_timeout=6.0,  # Faust's own consumer reads nothing; it must still start
        broker_heartbeat_interval=1.0,
        broker_request_timeout=30.0,
        producer_linger=0.002,
        loghandlers=[],
        TableManager=NoTableManager,
    )
    names = settings.topics
    scores = app.topic(names.scores, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(names.dlq, key_serializer="raw", value_serializer="raw")
    demand = app.topic(names.demand, key_serializer="raw", value_serializer="raw")
    sync = app.topic(names.sync, key_serializer="raw", value_serializer="raw")
    group = service.group
    event_batches = BatchChannel(app, maxsize=BATCHES_IN_FLIGHT)
    catalog_batches = BatchChannel(app, maxsize=BATCHES_IN_FLIGHT)
    control_batches = BatchChannel(app, maxsize=BATCHES_IN_FLIGHT)
    sync_batches = BatchChannel(app, maxsize=BATCHES_IN_FLIGHT)
    # a batch is applied and published under this lock: an erased user's tombstone is never
    # followed by a score computed before the erasure
    publishing = asyncio.Lock()

    sending = asyncio.Lock()  # updates leave one at a time, in the order of their seqs
    update_due = asyncio.Event()  # this worker applied sync_events since its last update

    async def send_update(
        leaving: list[int] | tuple[int, ...] = (), checkpoint: bool = False
    ) -> None:
        """Take this worker's model update between batches (:mod:`streams.sync`), then encode
        and send it and wait for the broker. ``leaving``: partitions revoked, handed over in
        it; ``checkpoint``: a checkpoint right after the update is taken, so it holds nothing
        the group's ``sync`` lacks."""
        async with sending:
            async with publishing:
                pending = None
                if group is not None:
                    group.revoked(leaving)
                    pending = group.take_update(leaving, events.partition_count())
                if checkpoint:
                    await app.producer.flush()
                    service.checkpoint(background=True)
            if pending is not None:
                await deliver_update(await asyncio.to_thread(pending.chunks))
            if group is not None:
                group.dropped(leaving)

    async def deliver_update(chunks: list[bytes]) -> None:
        """Send an update's chunks until the broker has them all (a resend repeats whole
        chunks; a receiver assembles the last full run of them)."""
        key = group.worker.encode()
        while True:
            try:
                sends = [await sync.send(key=key, value=chunk) for chunk in chunks]
                await asyncio.gather(*sends)
                return
            except KafkaError as err:  # the broker is away or lost the topic: wait, again
                log.error("model update %r not delivered: sending it again", err)
                await asyncio.sleep(RETRY_UPDATE_S)
                await asyncio.to_thread(
                    ensure_topics,
                    bootstrap,
                    settings.topics,
                    settings.partitions,
                    **settings.kafka_client_config(),
                )

    async def revoked(partitions: list[int]) -> None:
        """The group takes ``partitions`` away: hand them over in one last update. (None at
        the first join, which may come before Faust's producer has started.)"""
        if partitions:
            await send_update(leaving=partitions)

    async def caught_up() -> None:
        """Apply every update on ``sync`` so far, before taking partitions on; stop waiting
        when nothing more arrives for :data:`CATCH_UP_IDLE_S` (the embedded broker's end offset
        can differ from what is readable)."""
        if group is None:
            return
        end = await sync_reader.end_offset()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT_S
        seen, moved = group.state.position, loop.time()
        while group.state.position < end:
            if group.state.position != seen:
                seen, moved = group.state.position, loop.time()
            if loop.time() > deadline or loop.time() - moved > CATCH_UP_IDLE_S:
                log.error(
                    "sync not caught up (at %d of %d): taking partitions on from the state held",
                    group.state.position,
                    end,
                )
                return
            await asyncio.sleep(0.02)

    events = EventReader(
        settings,
        bootstrap,
        next_offset=service.next_offset,
        on_assigned=service.assigned,
        on_reset=service.events_reset,
        matches=service.log_matches,
        on_revoked=revoked,
        before_assigned=caught_up,
    )
    catalog = WholeTopicReader(
        settings,
        bootstrap,
        names.items,
        next_offset=service.next_catalog_offset,
        on_reset=service.catalog_reset,
    )
    control = WholeTopicReader(
        settings,
        bootstrap,
        names.control,
        next_offset=service.next_control_offset,
        on_reset=service.control_reset,
    )
    sync_reader = WholeTopicReader(
        settings,
        bootstrap,
        names.sync,
        next_offset=service.next_sync_offset,
        on_reset=service.sync_reset,
    )
    app.start_first = events.start  # its group join overlaps Faust's

    async def deliver(letters: dict[int, Letter]) -> None:
        """Send dead letters and wait for the broker; the unacknowledged stay in the outbox."""
        if not letters:
            return
        try:
            sends = [
                await dead_letters.send(key=key, value=value) for key, value in letters.values()
            ]
            results = await asyncio.gather(*sends, return_exceptions=True)
        except Exception as err:  # the producer refused them: retried by retry_dead_letters
            results = [err] * len(letters)
        delivered = [
            n for n, r in zip(letters, results, strict=True) if not isinstance(r, BaseException)
        ]
        if len(delivered) < len(letters):
            log.error("%d dead letters not delivered; retried", len(letters) - len(delivered))
        service.dead_letters.settled(letters, delivered)

    async def publish(outgoing: Outgoing) -> None:
        await deliver(outgoing.dead_letters)
        for key, value in outgoing.scores:
            await scores.send(key=key, value=value)
        for key in outgoing.tombstones:  # no value: compaction drops the user's scores
            await app.producer.send(names.scores, key, None, None, None, None)
        service.published(outgoing)

    @app.agent(catalog_batches, name="catalog")
    async def apply_catalog(stream: faust.StreamT) -> None:
        async for batch in stream:
            async with publishing:  # as every batch: applied and sent before the next is taken
                await publish(_or_stop(service.catalog_batch, batch))

    async def checkpoint_if_due() -> None:
        if service.checkpoint_due():
            await send_update(checkpoint=True)

    @app.agent(control_batches, name="control")
    async def apply_control(stream: faust.StreamT) -> None:
        async for batch in stream:
            async with publishing:
                outgoing = _or_stop(service.control_batch, batch)
                await publish(outgoing)
            if outgoing.tombstones:  # users erased: the next checkpoint is written without them
                await asyncio.to_thread(service.wait_for_checkpoint)  # one forked before
                await send_update(checkpoint=True)

    @app.agent(event_batches, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        async for batch in stream:
            if not events.current(batch):  # read before a revoke: read again from the state
                continue
            async with publishing:
                await publish(_or_stop(service.events_batch, batch))
            if (
                group is not None
                and group.update_due(settings.sync_events)
                and not group.alone(events.partition_count())
            ):
                update_due.set()
            await checkpoint_if_due()
            saved = service.take_saved_offsets()
            if saved:
                await events.commit(saved)

    async def forward(reader: EventReader | WholeTopicReader, channel: BatchChannel) -> None:
        """Hand the started ``reader``'s batches to ``channel`` until it stops."""
        try:
            while True:
                batch = await reader.next_batch()
                if batch:
                    await channel.hand(batch)
        except ConsumerStoppedError:
            return  # stopped at shutdown, after the last checkpoint

    @app.task
    async def read_events() -> None:
        await forward(events, event_batches)  # started with the app

    @app.task
    async def read_catalog() -> None:
        await catalog.start()
        await forward(catalog, catalog_batches)

    @app.task
    async def read_control() -> None:
        await control.start()
        await forward(control, control_batches)

    if group is not None:

        @app.agent(sync_batches, name="sync")
        async def apply_sync(stream: faust.StreamT) -> None:
            async for batch in stream:
                async with publishing:
                    _or_stop(service.sync_batch, batch)

        @app.task
        async def read_sync() -> None:
            await sync_reader.start()
            await forward(sync_reader, sync_batches)

        @app.task
        async def publish_updates() -> None:
            """An update every sync interval, or sooner once ``sync_events`` were applied."""
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(update_due.wait(), settings.sync_interval_s)
                update_due.clear()
                if not group.alone(events.partition_count()):  # alone: with each checkpoint
                    await send_update()

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_when_quiet() -> None:
        """A due checkpoint is written after a batch; a worker gone quiet writes the one it
        still owes here (the events it applied since its last, or a failed one's)."""
        if service.unsaved():
            await checkpoint_if_due()

    @app.timer(1.0)
    async def refresh_metrics() -> None:
        service.observe_lag(events.lag())
        service.refresh_slow_metrics()

    @app.task
    async def publish_demand() -> None:
        """A round of the forecasts that changed, bounded, then a pause: sends wait behind
        batches in the event loop, so a fixed timer would overlap itself on a busy worker."""
        while True:
            await asyncio.sleep(DEMAND_ROUND_S)
            records = service.demand_round()
            for key, value in records:
                await demand.send(key=key, value=value)
            service.demand_published(len(records))

    @app.task
    async def retry_dead_letters() -> None:
        """Send the dead letters not yet acknowledged (restored from a checkpoint, or whose
        send failed): at once when the app is ready, then every few seconds."""
        while True:
            await deliver(service.dead_letters.retry())
            await asyncio.sleep(RETRY_DEAD_LETTERS_S)

    @app.on_before_shutdown.connect
    async def checkpoint_on_shutdown(app: faust.App, **_: Any) -> None:
        await deliver(service.dead_letters.retry())
        if group is not None:  # the last update hands every partition over
            await send_update(leaving=sorted(group.owned or ()))
        await app.producer.flush()
        try:
            service.checkpoint(background=False)
        except OSError as err:  # a full disk, say: the older checkpoints stand
            log.error(
                "the shutdown checkpoint failed (%s): the next start resumes from the last "
                "checkpoint written and applies the events after it, once",
                err,
            )
            service.exit_status = EXIT_CHECKPOINT_FAILED
        await events.commit(service.take_saved_offsets())  # only offsets of checkpoints written
        for reader in (events, catalog, control, sync_reader):
            await reader.stop()

    return app


class WorkerApp(faust.App):
    """Faust's app, which calls ``start_first`` before it starts its own consumer.

    Both consumer groups then join at once: the worker's on ``events``
    (:class:`~streams.reader.EventReader`) and Faust's own. A first join
    takes half the session timeout on the embedded broker (3 s), and Faust
    starts its tasks only once its group is joined, so a worker that joined
    its group from a task started 3 s later than it does now.
    """

    start_first: Callable[[], Awaitable[None]] | None = None

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.start_first is not None:
            await self.start_first()


class NoTableManager(TableManager):
    """Faust's table manager without the second it waits for tables to be declared.

    The worker declares no tables (its state is in its checkpoints), so the
    wait (``TableManager.on_start``, faust-streaming 0.15.3) only delayed
    every start.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class BatchChannel(faust.Channel):
    """An in-memory channel of batches that a rebalance of Faust's own group leaves alone.

    Faust empties its channels' queues when a rebalance of its consumer
    group ends (``flow_control.resume``), and its streams skip the events
    sent before it (:meth:`hand` queues plain values instead). That group
    only holds Faust's leader topic here, and it rebalances whenever its
    coordinator moves, its session lapses (a broker restart, a starved
    heartbeat thread) or a peer worker dies: the batches read but not yet
    applied would be dropped, with the reader already past them. This
    channel's queue waits out a rebalance instead.
    """

    @property
    def queue(self) -> Any:
        if self._queue is None:  # made on first use, after the clone that iterates
            self._queue = self.app.FlowControlQueue(maxsize=self.maxsize, clear_on_resume=False)
        return self._queue

    async def hand(self, batch: list[RawMessage]) -> None:
        """Queue ``batch`` for the agent as a plain value, not as ``send`` would, in a Faust
        event: a stream skips an event made before its app's group last rebalanced (its
        ``generation_id``), and one read batch was lost that way at a worker's takeover of a
        SIGKILLed peer's partitions (1,000 events never applied, their offsets passed)."""
        await self.put(batch)


def _or_stop(apply: Callable[[list[RawMessage]], T], batch: list[RawMessage]) -> T:
    """``apply(batch)``, or stop the process at once if it raises (fail-stop).

    A batch that raised may have advanced offsets, labels and deduplication
    for part of its messages: carrying on, or writing a checkpoint, would
    lose or repeat those events. Exiting without a checkpoint restarts the
    worker from the last one, which replays the batch exactly once.
    """
    try:
        return apply(batch)
    except Exception:
        first = batch[0] if batch else None
        log.critical(
            "applying a batch of %d messages (first: partition %s offset %s) failed; "
            "exiting without a checkpoint, the next start replays it from the last one",
            len(batch),
            getattr(first, "partition", "-"),
            getattr(first, "offset", "-"),
            exc_info=True,
        )
        logging.shutdown()
        os._exit(EXIT_BATCH_FAILED)
