"""Micro-batches bounded by size and by age.

A learner steps once per micro-batch; the stream worker fills one with
:meth:`MicroBatcher.add` and also calls :meth:`MicroBatcher.poll` on a timer,
so a quiet stream still gets its few samples learned within ``max_age``
seconds. The clock is injectable, for tests and for replays.

Example
-------
>>> now = [0.0]
>>> batcher = MicroBatcher(max_size=3, max_age=2.0, clock=lambda: now[0])
>>> batcher.add("a"), batcher.add("b")
(None, None)
>>> batcher.add("c")                      # full
['a', 'b', 'c']
>>> batcher.add("d"); now[0] = 2.5
>>> batcher.seconds_until_due()
0.0
>>> batcher.poll()                        # old enough
['d']
>>> batcher.poll() is None, len(batcher)
(True, 0)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Accumulates items; releases them at ``max_size`` items or ``max_age`` seconds.

    Parameters
    ----------
    max_size
        Items per batch at most.
    max_age
        Seconds the first item of a batch may wait.
    clock
        Seconds, monotonic (``time.monotonic`` by default).
    """

    def __init__(
        self, max_size: int, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1 or max_age < 0:
            raise ValueError("need max_size >= 1 and max_age >= 0")
        self.max_size = max_size
        self.max_age = max_age
        self._clock = clock
        self._pending: list[T] = []
        self._started = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: T) -> list[T] | None:
        """Add ``item``; return the batch if it is now full or old enough."""
        if not self._pending:
            self._started = self._clock()
        self._pending.append(item)
        if len(self._pending) >= self.max_size:
            return self.flush()
        return self.poll()

    def seconds_until_due(self) -> float | None:
        """Seconds until the pending batch is due (0 if it is); ``None`` if empty."""
        if not self._pending:
            return None
        return max(0.0, self._started + self.max_age - self._clock())

    def poll(self) -> list[T] | None:
        """The pending batch if its oldest item is ``max_age`` old, else ``None``."""
        if self._pending and self._clock() - self._started >= self.max_age:
            return self.flush()
        return None

    def flush(self) -> list[T]:
        """Whatever is pending (possibly nothing), now."""
        batch, self._pending = self._pending, []
        return batch
