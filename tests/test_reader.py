"""The events reader on the real broker: a catch-up longer than the session before taking
partitions on leaves the group settled."""

from __future__ import annotations

import asyncio

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
