"""Read ``events`` and ``items`` in whole micro-batches with plain aiokafka consumers.

Faust's consumer hands a stream one message at a time, and that path costs
about 300 µs of CPU per message (conductor callback, stream queue, event
objects, acks): measured on a pre-filled topic, ``recstream worker`` on
Faust's consumer applied 1.7k events/s and a bare Faust pass-through moved
3.1k/s, while an aiokafka ``getmany`` loop feeding a Faust agent through a
channel of *batches* moved 57k/s with the same JSON decode and sends. So the
worker reads here, in bulk, and the Faust app (:mod:`streams.app`) keeps
everything else: the agents, the lifecycle, the producer.

Owning the consumer also removes every private hook Faust needed: the fetch
wait is aiokafka's ``fetch_max_wait_ms`` (the embedded broker answers a
multi-partition fetch only when it expires, so it sets latency), offsets are
committed with the public ``commit``, and positions are set with ``seek``.

- :class:`EventReader` is a member of the worker's consumer group. On every
  assignment it seeks each partition to the next offset the pipeline has not
  applied (``next_offset``: the restored checkpoint's at start), so a worker
  never resumes ahead of its state, whatever the group committed.
- :class:`WholeTopicReader` reads every partition of a topic outside any
  group, from the beginning or from where the restored checkpoint stops:
  the compacted ``items`` topic (each worker needs the whole catalog) and
  the operators' ``control`` topic.

Example
-------
>>> reader = EventReader(Settings(), "127.0.0.1:9092", next_offset=lambda p: 0)  # doctest: +SKIP
>>> await reader.start(); batch = await reader.next_batch()                       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.helpers import create_ssl_context

from streams.pipeline import RawMessage
from streams.settings import Settings


class ReadBatch(list[RawMessage]):
    """Messages of one fetch, with the reader's ``generation`` (count of revokes) when it
    returned them: a batch read before a revoke is stale once its partitions are taken on
    again, positioned at the state's offsets (:meth:`EventReader.current`).

    >>> batch = ReadBatch([RawMessage(0, 5, None, b"{}")], generation=2)
    >>> len(batch), batch.generation
    (1, 2)
    """

    def __init__(self, messages: Iterable[RawMessage], generation: int) -> None:
        super().__init__(messages)
        self.generation = generation


log = logging.getLogger("recstream.worker")

Matches = Callable[[int, int, bytes | None], bool]
"""``matches(partition, offset, value)``: is this the message the state applied there last?"""


class _PartitionReader:
    """What both readers share: a consumer made in the event loop, positions from the state."""

    def __init__(
        self,
        config: dict[str, Any],
        next_offset: Callable[[int], int],
        on_reset: Callable[..., None],
        matches: Matches | None = None,
    ) -> None:
        self._config = config
        self._next_offset = next_offset
        self._on_reset = on_reset
        self.consumer: AIOKafkaConsumer | None = None
        self.resets = ResetWatch(next_offset, on_reset, config, matches)

    async def _connect(self) -> AIOKafkaConsumer:
        """aiokafka consumers must be made inside the event loop: here, not in ``__init__``."""
        self.consumer = AIOKafkaConsumer(**self._config)
        await self.consumer.start()
        return self.consumer

    async def _position(self, partitions: Iterable[TopicPartition]) -> None:
        """Each partition at the state's next offset, or at its start when its log was reset."""
        partitions = list(partitions)
        for tp in partitions:  # at once: a fetch may start while the check below awaits
            self.consumer.seek(tp, self._next_offset(tp.partition))
        # and none does until the check is over: a message applied from a log that was
        # reset would move the state's offsets past what the new log holds below them
        self.consumer.pause(*partitions)
        try:
            for tp in await self.resets.reset(self.consumer, partitions):
                await self.consumer.seek_to_beginning(tp)
        finally:
            self.consumer.resume(*partitions)

    async def _fetch(self, timeout_ms: int, max_records: int) -> list[RawMessage]:
        try:
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as err:
            await _read_again_from_the_start(self.consumer, err, self._on_reset)
            return []
        return [
            RawMessage(m.partition, m.offset, m.key, m.value, m.timestamp)
            for records in fetched.values()
            for m in records
        ]

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


class EventReader(_PartitionReader):
    """The worker's group member on ``events``: micro-batches in, checkpoint offsets out.

    ``next_offset(partition)`` is the next offset not yet applied;
    ``on_assigned(partitions)`` is told the partitions owned after each rebalance.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        next_offset: Callable[[int], int],
        on_assigned: Callable[[list[int]], None] = lambda partitions: None,
        on_reset: Callable[..., None] = lambda partition, offset, read_ahead=False: None,
        matches: Matches | None = None,
        on_revoked: Callable[[list[int]], Awaitable[None]] | None = None,
        before_assigned: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        config = dict(
            bootstrap_servers=bootstrap,
            group_id=f"recstream-{settings.topic_prefix}worker",
            client_id="recstream-worker",
            enable_auto_commit=False,
            auto_offset_reset="none",  # a position past the log is a reset we must see
            fetch_max_wait_ms=settings.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
            request_timeout_ms=30_000,
            **aiokafka_security(settings),
        )
        super().__init__(config, next_offset, on_reset, matches)
        self.settings = settings
        self.topic = settings.topics.events
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._before_assigned = before_assigned
        self._listener: _SeekOnAssign | None = None
        self.generation = 0  # revokes so far: a batch read before one is stale

    async def start(self) -> None:
        """Connect and join the group."""
        consumer = await self._connect()
        self._listener = _SeekOnAssign(self)
        consumer.subscribe([self.topic], listener=self._listener)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        await super().stop()

    async def next_batch(self) -> ReadBatch:
        """Up to ``batch_size`` messages: what has arrived, waiting ``batch_wait_ms`` for one."""
        messages = await self._fetch(self.settings.batch_wait_ms, self.settings.batch_size)
        return ReadBatch(messages, self.generation)  # as it returns: the positions it read at

    def current(self, batch: ReadBatch) -> bool:
        """Whether ``batch`` was read since the last revoke. One read before it (waiting to be
        applied while the group rebalanced) must not be applied: its partitions were taken on
        again from the state's offsets, and its messages would move them past the ones in
        between."""
        return batch.generation == self.generation

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``{partition: next offset}`` for the partitions this worker still owns."""
        if self.consumer is None or not offsets:
            return
        owned = {tp.partition for tp in self.consumer.assignment()}
        mine = {TopicPartition(self.topic, p): o for p, o in offsets.items() if p in owned}
        if mine:
            await self.consumer.commit(mine)

    def partition_count(self) -> int:
        """Partitions of ``events`` as last known (0 before the first metadata)."""
        partitions = self.consumer.partitions_for_topic(self.topic) if self.consumer else None
        return len(partitions or ())

    def lag(self) -> dict[int, int]:
        """Messages between the next offset to read and the end of each owned partition."""
        lags: dict[int, int] = {}
        for tp in self.consumer.assignment() if self.consumer else ():
            end = self.consumer.highwater(tp)
            if end is not None:
                lags[tp.partition] = max(0, end - self._next_offset(tp.partition))
        return lags


class _SeekOnAssign(ConsumerRebalanceListener):
    """Hands partitions over when they are revoked; takes them on after the callback returns.

    aiokafka sends no heartbeat while ``on_partitions_assigned`` runs (it
    starts the heartbeat task once the join completes), so a catch-up inside
    it that outlasted the 6-s session got the member expired: a joining
    worker reading a long ``sync`` backlog was dropped, rejoined and dropped
    again, and the group never settled. The callback only parks the new
    partitions (positioned, paused); a task catches up, takes them on and
    resumes them while the member heartbeats.
    """

    def __init__(self, reader: EventReader) -> None:
        self.reader = reader
        self._taking_on: asyncio.Task[None] | None = None
        self._taken: set[int] = set()  # partitions told to on_assigned, not yet revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Hand over the partitions taken on (the group waits for this before assigning them);
        a take-on still catching up is cancelled: its partitions were never this worker's."""
        self.reader.generation += 1  # batches read until now are stale
        await self._cancel_taking_on()
        if self.reader._on_revoked is not None:
            partitions = sorted(tp.partition for tp in revoked if tp.partition in self._taken)
            await self.reader._on_revoked(partitions)
        self._taken.difference_update(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Park the partitions at the state's offsets, and take them on in a task."""
        assigned = list(assigned)
        consumer = self.reader.consumer
        for tp in assigned:  # a position, and no fetch, while the state catches up
            consumer.seek(tp, self.reader._next_offset(tp.partition))
        consumer.pause(*assigned)
        self._taking_on = asyncio.create_task(self._take_on(assigned))
        self._taking_on.add_done_callback(_log_failure)

    async def _take_on(self, assigned: list[TopicPartition]) -> None:
        """Catch up with the group's state, take the partitions on from it, then seek."""
        if self.reader._before_assigned is not None:
            await self.reader._before_assigned()
        partitions = sorted(tp.partition for tp in assigned)
        self.reader._on_assigned(partitions)
        self._taken = set(partitions)
        await self.reader._position(assigned)
        log.info("assigned %s partitions %s", self.reader.topic, partitions)

    async def _cancel_taking_on(self) -> None:
        task, self._taking_on = self._taking_on, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Stop a take-on still catching up (the consumer is stopping)."""
        await self._cancel_taking_on()


def _log_failure(task: asyncio.Task[None]) -> None:
    """A take-on that raised leaves its partitions paused: say so (a cancelled one is fine)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("taking partitions on failed: they stay paused", exc_info=task.exception())


class WholeTopicReader(_PartitionReader):
    """Every partition of ``topic``, outside the consumer group, from ``next_offset(partition)``.

    For what each worker needs whole: the catalog (``items``) and the
    operators' ``control`` topic. What was read before the restored
    checkpoint is in its state, so a restart reads on from there (0: from
    the beginning).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        topic: str,
        next_offset: Callable[[int], int],
        on_reset: Callable[..., None] = lambda partition, offset, read_ahead=False: None,
    ) -> None:
        config = dict(
            bootstrap_servers=bootstrap,
            group_id=None,
            client_id=f"recstream-{topic}",
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,  # sync records are up to ~1 MB
            **aiokafka_security(settings),
        )
        super().__init__(config, next_offset, on_reset)
        self.topic = topic
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Connect, take every partition and go to where the restored state stops."""
        consumer = await self._connect()
        await consumer.topics()  # metadata, so the partitions are known
        partitions = consumer.partitions_for_topic(self.topic) or set()
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await self._position(assigned)
        self.started.set()

    async def end_offset(self, partition: int = 0) -> int:
        """The end of ``partition`` as the broker reports it now (once started)."""
        await self.started.wait()
        tp = TopicPartition(self.topic, partition)
        return (await self.consumer.end_offsets([tp]))[tp]

    async def next_batch(self) -> list[RawMessage]:
        """Up to 1,000 records, waiting at most a second for one."""
        return await self._fetch(1_000, 1_000)


class ResetWatch:
    """Finds partitions whose log no longer holds the offsets the state has reached.

    A broker that restarted empty, or a recreated topic, does not always
    answer a fetch past its end with an error (the embedded one returns
    nothing), so at every assignment (a restarted broker forces one) each
    partition's end offset is compared with the state's next offset. A
    shorter log is confirmed by reading it: the embedded broker's reported
    end can lag what is readable, so only a partition where the last applied
    message cannot be read back is a reset.

    A new log can also have grown past the old offsets by the time the
    worker is assigned again (a producer that went on at once): with
    ``matches(partition, offset, value)``, the message now at the last
    applied offset is read back and compared with the one the state applied
    there (:meth:`~streams.service.WorkerService.log_matches`); another
    message there is a reset too. ``on_reset(partition, offset, True)``:
    messages of that partition read from the old position before the reset
    was found may still be on their way, and must not be applied.
    """

    def __init__(
        self,
        next_offset: Callable[[int], int],
        on_reset: Callable[..., None],
        probe_config: dict[str, Any],
        matches: Matches | None = None,
    ) -> None:
        self._next_offset = next_offset
        self._on_reset = on_reset
        self._probe_config = probe_config
        self._matches = matches

    async def reset(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
    ) -> set[TopicPartition]:
        """The partitions (of ``partitions``) that were reset; ``on_reset`` is told of each."""
        expected = {tp: self._next_offset(tp.partition) for tp in partitions}
        expected = {tp: offset for tp, offset in expected.items() if offset > 0}
        if not expected:
            return set()
        try:
            ends = await consumer.end_offsets(list(expected))
        except KafkaError as err:  # the broker is away: the fetches will tell
            log.warning("could not read end offsets: %r", err)
            return set()
        shorter = {tp: ends.get(tp, offset) < offset for tp, offset in expected.items()}
        probed = [tp for tp in expected if shorter[tp] or self._matches is not None]
        values = await asyncio.gather(*(self._read(tp, expected[tp] - 1) for tp in probed))
        reset = set()
        for tp, last in zip(probed, values, strict=True):
            offset = expected[tp]
            if last is None:
                gone = shorter[tp]  # not readable: a reset only where the log is shorter
            else:
                gone = self._matches is not None and not self._matches(
                    tp.partition, offset - 1, last
                )
            if gone:
                self._on_reset(tp.partition, offset, True)
                reset.add(tp)
        return reset

    async def _read(self, tp: TopicPartition, offset: int) -> bytes | None:
        """The value at ``offset`` (``b""`` for a message without one), None if unreadable."""
        probe = AIOKafkaConsumer(**{**self._probe_config, "group_id": None})
        await probe.start()
        try:
            probe.assign([tp])
            probe.seek(tp, offset)
            fetched = await probe.getmany(tp, timeout_ms=2_000, max_records=1)
            for record in fetched.get(tp, []):
                if record.offset == offset:
                    return record.value if record.value is not None else b""
            return None
        except OffsetOutOfRangeError:
            return None
        finally:
            await probe.stop()


async def _read_again_from_the_start(
    consumer: AIOKafkaConsumer,
    err: OffsetOutOfRangeError,
    on_reset: Callable[[int, int], None],
) -> None:
    """A position outside a partition's log: tell ``on_reset`` and go to the log's start.

    The log no longer holds the offsets the state has reached: the topic was
    recreated, the broker restarted empty, or retention removed what was not
    yet read. Everything the log holds now is read, so nothing produced since
    is lost; deduplication by ``event_id`` keeps a re-sent event from
    counting twice.
    """
    positions = err.args[0] if err.args and isinstance(err.args[0], dict) else {}
    for tp, offset in positions.items():
        on_reset(tp.partition, offset)
        await consumer.seek_to_beginning(tp)


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """SASL/TLS settings as aiokafka keyword arguments (empty for plaintext)."""
    s = settings.security
    config: dict[str, Any] = {}
    if s.protocol:
        config["security_protocol"] = s.protocol
    if s.sasl_mechanism:
        config.update(
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_username,
            sasl_plain_password=s.sasl_password,
        )
    if s.protocol in ("SSL", "SASL_SSL"):
        config["ssl_context"] = create_ssl_context(
            cafile=s.ssl_cafile, certfile=s.ssl_certfile, keyfile=s.ssl_keyfile
        )
    return config
