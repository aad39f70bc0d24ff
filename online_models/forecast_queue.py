"""Item forecasts waiting to be published: a place per row, oldest first, newest values.

A demand point changes the forecasts of thousands of items at once, and the
worker publishes a bounded number a second (:class:`~online_models.demand.DemandConfig`'s
``publish_per_round``), so the queue is often thousands long when the next
point comes. An item queued again keeps its place and takes its newest
forecast. Held as per-row arrays and segments of rows, a point queues its
changes in a few array operations; a dict of record objects rebuilt every
item's record at every point (19 ms a point for 7,000 items on the 2-core
machine, on the event loop of the worker that leads demand).

Example
-------
>>> import numpy as np
>>> queue = ForecastQueue(capacity=8, targets=2)
>>> queue.put(np.array([3, 5]), np.array([[1.0, 2.0], [0.5, 0.1]]), version=1, at_ms=10)
>>> queue.put(np.array([3]), np.array([[1.5, 2.5]]), version=2, at_ms=20)  # keeps its place
>>> rows, values, versions, at_ms = queue.take(1)
>>> rows.tolist(), values.tolist(), versions.tolist(), at_ms.tolist()
([3], [[1.5, 2.5]], [2], [20])
>>> len(queue), queue.take(5)[0].tolist(), len(queue)
(1, [5], 0)
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ForecastQueue:
    """Rows waiting to be taken, each with its latest forecast (see the module docstring).

    Parameters
    ----------
    capacity
        Rows there can be (the forecaster's item rows).
    targets
        Values per forecast.
    """

    def __init__(self, capacity: int, targets: int) -> None:
        self._ticket = np.zeros(capacity, np.int64)  # the segment a row waits in; 0: none
        self._values = np.zeros((capacity, targets))
        self._version = np.zeros(capacity, np.int64)
        self._at_ms = np.zeros(capacity, np.int64)
        self._segments: deque[tuple[int, np.ndarray]] = deque()
        self._tickets = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, rows: np.ndarray, values: np.ndarray, version: int, at_ms: int) -> None:
        """Queue ``rows`` (distinct, in this order) with their ``values``; a row already
        waiting keeps its place and takes the new values."""
        self._values[rows] = values
        self._version[rows] = version
        self._at_ms[rows] = at_ms
        new = rows[self._ticket[rows] == 0]
        if len(new):
            self._tickets += 1
            self._ticket[new] = self._tickets
            self._segments.append((self._tickets, new))
            self._size += len(new)

    def take(self, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``limit`` rows, oldest first, no longer waiting: ``(rows, values, versions,
        at_ms)``."""
        picked: list[np.ndarray] = []
        count = 0
        while self._segments and count < limit:
            ticket, rows = self._segments.popleft()
            rows = rows[self._ticket[rows] == ticket]  # not dropped (nor dropped and queued again)
            head, rest = rows[: limit - count], rows[limit - count :]
            if len(rest):
                self._segments.appendleft((ticket, rest))
            picked.append(head)
            count += len(head)
        rows = np.concatenate(picked) if picked else np.empty(0, np.int64)
        self._ticket[rows] = 0
        self._size -= len(rows)
        return rows, self._values[rows], self._version[rows], self._at_ms[rows]

    def drop(self, rows: np.ndarray) -> None:
        """``rows`` no longer wait (their items were released)."""
        waiting = rows[self._ticket[rows] != 0]
        self._ticket[waiting] = 0
        self._size -= len(waiting)

    def clear(self) -> None:
        """Nothing waits."""
        self._ticket[:] = 0
        self._segments.clear()
        self._size = 0
