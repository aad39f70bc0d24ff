"""A test-mode ledger of every ``events`` (partition, offset) applied to the model state.

Counts cannot show exactly-once: one event lost and another applied twice
cancel out. The ledger records *which* messages were applied, per
partition, as runs of consecutive offsets (``[start, stop)``), in the order
they were applied. It lives in the worker's checkpointed state (enabled by
``RECSTREAM_LEDGER=1``, never in production), so after a crash and restore
it holds exactly the lineage of the surviving model state: entries applied
after the restored checkpoint are gone with that state, and an offset that
shows up twice really was applied twice to the state that survived.

A partition whose log was reset (topic recreated, embedded broker restarted
empty) starts a new *epoch*: its offsets count from 0 again and name other
messages, so each epoch has its own runs.

Example
-------
>>> ledger = ApplyLedger()
>>> for offset in (0, 1, 2, 5, 6):
...     ledger.applied(3, offset)
>>> ledger.runs(3)
[[0, 3], [5, 7]]
>>> ledger.applied(3, 6)             # applied again: a second entry
>>> ledger.counts(3)[6], ledger.counts(3)[5]
(2, 1)
>>> ledger.reset(3)                  # the log was reset: offsets name new messages
>>> ledger.applied(3, 0)
>>> ledger.epochs(3), ledger.runs(3), ledger.runs(3, epoch=0)
(2, [[0, 1]], [[0, 3], [5, 7], [6, 7]])
>>> ApplyLedger.from_state(ledger.state_dict()).runs(3, epoch=0) == ledger.runs(3, epoch=0)
True
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class ApplyLedger:
    """Applied offsets per partition and epoch: runs ``[start, stop)`` in order of application."""

    def __init__(self) -> None:
        self._epochs: dict[int, list[list[int]]] = {}  # partition -> epochs -> flat runs

    def applied(self, partition: int, offset: int) -> None:
        """``offset`` of ``partition`` was applied to the model state."""
        flat = self._current(partition)
        if flat and flat[-1] == offset:
            flat[-1] = offset + 1
        else:
            flat += (offset, offset + 1)

    def reset(self, partition: int) -> None:
        """``partition``'s log was reset: later offsets belong to a new epoch."""
        self._epochs.setdefault(partition, [[]]).append([])

    def partitions(self) -> list[int]:
        """Partitions with at least one epoch, ascending."""
        return sorted(self._epochs)

    def epochs(self, partition: int) -> int:
        """How many epochs ``partition`` has (1 until its first reset; 0 if never seen)."""
        return len(self._epochs.get(partition, ()))

    def runs(self, partition: int, epoch: int = -1) -> list[list[int]]:
        """The runs of ``epoch`` (default: the current one) as ``[start, stop]`` pairs."""
        epochs = self._epochs.get(partition)
        if not epochs:
            return []
        flat = epochs[epoch]
        return [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)]

    def counts(self, partition: int, epoch: int = -1) -> Counter[int]:
        """How many times each offset of ``epoch`` was applied."""
        counted: Counter[int] = Counter()
        for start, stop in self.runs(partition, epoch):
            counted.update(range(start, stop))
        return counted

    def export(self, partition: int) -> list[list[int]]:
        """``partition``'s epochs of flat runs, for :meth:`load` on another worker."""
        return [list(flat) for flat in self._epochs.get(partition, ())]

    def load(self, partition: int, epochs: list[list[int]]) -> None:
        """Replace ``partition``'s runs with those :meth:`export` gave (a partition moved)."""
        if epochs:
            self._epochs[partition] = [[int(o) for o in flat] for flat in epochs]
        else:
            self._epochs.pop(partition, None)

    def state_dict(self) -> dict[str, Any]:
        """Plain lists: ``{"partitions": [[partition, [flat runs of each epoch]], ...]}``."""
        return {
            "partitions": [[p, [list(e) for e in epochs]] for p, epochs in self._epochs.items()]
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ApplyLedger:
        """A ledger continuing from :meth:`state_dict`."""
        ledger = cls()
        for partition, epochs in state["partitions"]:
            ledger._epochs[int(partition)] = [[int(o) for o in flat] for flat in epochs]
        return ledger

    def _current(self, partition: int) -> list[int]:
        return self._epochs.setdefault(partition, [[]])[-1]
