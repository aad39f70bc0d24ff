"""The events reader on the real broker: a catch-up longer than the session before taking
partitions on leaves the group settled; a batch read before a revoke is stale after it."""

from __future__ import annotations

import asyncio

from kafka import KafkaProducer

from streams.reader import EventReader
from streams.settings import Settings

SESSION_S = 6.0  # EventReader's session timeout


class Member:
    """An events reader whose catch-up before each assignment takes ``catch_up_s``; what its
    callbacks were told, in order."""

    def __init__(self, settings: Settings, catch_up_s: float) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.catch_up_s = catch_up_s
        self.reader = EventReader(
            settings,
            settings.broker,
            next_offset=lambda partition: 0,
            on_assigned=lambda partitions: self.calls.append(("assigned", partitions)),
            on_revoked=self.revoked,
            before_assigned=self.catch_up,
        )

    async def catch_up(self) -> None:
        await asyncio.sleep(self.catch_up_s)

    async def revoked(self, partitions: list[int]) -> None:
        if partitions:  # a first join revokes nothing
            self.calls.append(("revoked", partitions))

    def assigned(self) -> list[list[int]]:
        return [partitions for call, partitions in self.calls if call == "assigned"]

    async def poll_until(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await self.reader.next_batch()


def test_a_catch_up_longer_than_the_session_leaves_the_group_settled(settings: Settings):
    """aiokafka sends no heartbeat while an assignment callback runs. A catch-up inside it
    that outlasted the session got the joining member expired: it rejoined, was expired again,
    and the two members revoked and took partitions in turn for as long as they ran."""
    first, joiner = Member(settings, 0.0), Member(settings, SESSION_S * 1.5)

    async def run() -> None:
        done = asyncio.Event()
        await first.reader.start()
        polls = [asyncio.create_task(first.poll_until(done))]
        try:
            while not first.assigned():
                await asyncio.sleep(0.1)
            await joiner.reader.start()
            polls.append(asyncio.create_task(joiner.poll_until(done)))
            while not joiner.assigned():
                await asyncio.sleep(0.1)
            await asyncio.sleep(SESSION_S)  # an expired member learns it at its next heartbeat
        finally:
            done.set()
            await asyncio.gather(*polls)
            await joiner.reader.stop()
            await first.reader.stop()

    asyncio.run(run())
    assert len(joiner.assigned()) == 1 and len(joiner.assigned()[0]) == 2, joiner.calls
    assert first.calls == [
        ("assigned", [0, 1, 2, 3]),
        ("revoked", [0, 1, 2, 3]),
        ("assigned", sorted({0, 1, 2, 3} - set(joiner.assigned()[0]))),
    ]


def test_a_batch_read_before_a_revoke_is_not_current_after_it(settings: Settings):
    """A batch waiting to be applied while the group rebalanced holds messages of partitions
    that are taken on again from the state's offsets: applied after that, it moved them past
    the messages in between."""
    producer = KafkaProducer(bootstrap_servers=settings.broker)
    for n in range(40):
        producer.send(settings.topics.events, key=f"u{n}".encode(), value=b"{}")
    producer.flush()
    producer.close()
    first, joiner = Member(settings, 0.0), Member(settings, 0.0)

    async def run() -> tuple[bool, bool, bool]:
        await first.reader.start()
        before = await first.reader.next_batch()
        while not before:
            before = await first.reader.next_batch()
        current_then = first.reader.current(before)
        await joiner.reader.start()
        done = asyncio.Event()
        polls = [asyncio.create_task(m.poll_until(done)) for m in (first, joiner)]
        try:
            while not joiner.assigned():
                await asyncio.sleep(0.1)
        finally:
            done.set()
            await asyncio.gather(*polls)
        after = await first.reader.next_batch()
        result = current_then, first.reader.current(before), first.reader.current(after)
        await joiner.reader.stop()
        await first.reader.stop()
        return result

    assert asyncio.run(run()) == (True, False, True)
