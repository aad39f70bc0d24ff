"""Dead letters from the moment they are made until the broker has acknowledged them.

A dead letter leaves the outbox only when the broker acknowledged it, not
when it was handed to the producer's buffer (a buffer dies with the process).
Everything still in the outbox is part of every checkpoint, so a letter is
never lost to a crash, a failed send or a shutdown: the topic is
at-least-once (a crash after delivery but before the next checkpoint sends a
letter again), never at-most-once.

Each letter gets a number; a letter being sent is *in flight* and is not
handed out again for a retry until its send has settled.

Example
-------
>>> outbox = DeadLetterOutbox()
>>> sending = outbox.add([(b"k", b"first"), (None, b"second")])   # sent at once
>>> outbox.retry()                                                 # both are in flight
{}
>>> outbox.settled(sending, delivered=[0])                         # the second failed
>>> outbox.retry()
{1: (None, b'second')}
>>> len(outbox), outbox.letters()
(1, [(None, b'second')])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Letter = tuple[bytes | None, bytes]
"""A dead-letter message: (key, value)."""


class DeadLetterOutbox:
    """Numbered dead letters not yet acknowledged, and which of them are being sent."""

    def __init__(self, letters: Iterable[Letter] = ()) -> None:
        self._pending: dict[int, Letter] = {}
        self._in_flight: set[int] = set()
        self._next = 0
        self._number(letters)

    def add(self, letters: Iterable[Letter]) -> dict[int, Letter]:
        """New letters, to be sent now: numbered and marked in flight."""
        added = self._number(letters)
        self._in_flight.update(added)
        return added

    def retry(self) -> dict[int, Letter]:
        """Every letter not acknowledged and not in flight, marked in flight."""
        waiting = {n: letter for n, letter in self._pending.items() if n not in self._in_flight}
        self._in_flight.update(waiting)
        return waiting

    def settled(self, sent: Mapping[int, Letter], delivered: Iterable[int]) -> None:
        """The sends of ``sent`` are over; the ``delivered`` ones were acknowledged."""
        for number in delivered:
            self._pending.pop(number, None)
        self._in_flight.difference_update(sent)

    def letters(self) -> list[Letter]:
        """Every letter not acknowledged, in flight or not, oldest first (for checkpoints)."""
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    def _number(self, letters: Iterable[Letter]) -> dict[int, Letter]:
        numbered = {}
        for letter in letters:
            numbered[self._next] = letter
            self._next += 1
        self._pending.update(numbered)
        return numbered
